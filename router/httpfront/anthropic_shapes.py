"""Anthropic's Messages API: the request body of POST /v1/messages and the Message it returns, with
the RL extensions of the OpenAI routes (docs/http.md). Stream events are built in messages.py."""

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


class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    content: list[TextBlock]
    model: str
    stop_reason: str | None
    stop_sequence: str | None
    usage: MessageUsage
    # RL extensions
    policy_version: int
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None
    raw_logprobs: list[float] | None = None
