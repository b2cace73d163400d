"""Request bodies of the OpenAI-compatible routes, validated by pydantic (docs/http.md).

Pydantic checks types only; value rules (temperature >= 0, n in [1, max_n], the context length...)
are the gRPC path's own (epochserve.sampling, proto/convert.py), applied by translate.py and the
request flow, so both fronts refuse the same things with the same messages. Unknown fields are
ignored, as OpenAI's own server does with fields it does not know.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class GenerationFields(BaseModel):
    """What completions and chat completions share: sampling, n, streaming, the RL extensions."""

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None  # refused unless 0 (translate.py)
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # Extensions (vLLM's names where it has them).
    top_k: int | None = None
    min_p: float | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    # RL extensions (docs/http.md).
    min_policy_version: int | None = None
    prompt_token_ids: list[int] | None = None  # the prompt as ids: no tokenizer, no chat template
    return_raw_logprobs: bool = False
    return_routed_experts: bool = False  # MoE models: each choice's routed_experts (routing replay)
    output_mode: Literal["stream", "final"] | None = None  # default: docs/http.md
    timeout: float | None = Field(default=None, gt=0)  # seconds: the request's deadline (504 after it)

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(GenerationFields):
    prompt: str | list[int] | list[str] | list[list[int]] | None = None
    max_tokens: int | None = (
        16  # OpenAI's default for completions; 0 with echo or prompt_logprobs: score only
    )
    logprobs: int | None = None  # N: each token's logprob and the N most likely tokens
    echo: bool = False  # the prompt before the text (with logprobs: its tokens' logprobs first)
    prompt_logprobs: int | None = None  # vLLM's: each prompt token's logprob (only 0: no alternatives)
    best_of: int | None = None  # refused above n
    suffix: str | None = None  # refused when set


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    """One message; fields beyond these (tool_calls, tool_call_id, name, ...) go to the template."""

    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage]
    max_tokens: int | None = None  # unset: up to the context length
    max_completion_tokens: int | None = None  # OpenAI's newer name; wins over max_tokens
    logprobs: bool = False
    top_logprobs: int | None = None
    prompt_logprobs: int | None = None  # vLLM's: each prompt token's logprob (only 0: no alternatives)
    tools: list[dict[str, Any]] | None = None  # rendered by the chat template; calls are not parsed
    tool_choice: str | dict[str, Any] | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
