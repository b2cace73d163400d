"""Anthropic's Messages API: the request body of POST /v1/messages and the Message it returns, with
the RL extensions of the OpenAI routes (docs/http.md). The Message is built as a plain dict (read by
no validator: serialized once); stream events are built in messages.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from epochserve.router.httpfront.requests import ContentPart, GenerationFields


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: str | list[ContentPart]  # blocks other than text are refused (chat.template_message)


class MessagesRequest(GenerationFields):
    """Anthropic's fields; the OpenAI extras of GenerationFields (seed, min_p, stop_token_ids,
    ignore_eos, the RL extensions) are honoured too."""

    messages: list[InputMessage]
    max_tokens: int  # required, as Anthropic's API has it
    system: str | list[ContentPart] | None = None
    stop_sequences: list[str] | None = None
    metadata: dict[str, Any] | None = None  # ignored
    tools: list[dict[str, Any]] | None = None  # refused (not rendered on this route yet)

    @property
    def stops(self) -> tuple[str, ...]:
        return tuple(self.stop_sequences or ())


def message(
    message_id: str,
    text: str | None,
    model: str,
    stop_reason: str | None,
    stop_sequence: str | None,
    usage: dict[str, int],
    policy_version: int,
    **extensions: Any,
) -> dict[str, Any]:
    """A Message (`text` None: empty content, as a stream's message_start has it); `extensions`:
    token_ids, prompt_token_ids, raw_logprobs, in that order."""
    content = [] if text is None else [{"type": "text", "text": text}]
    return {"id": message_id, "type": "message", "role": "assistant", "content": content, "model": model,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage,
            "policy_version": policy_version, **extensions}  # fmt: skip
