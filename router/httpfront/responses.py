"""Response bodies of the OpenAI-compatible routes, with the RL extensions (docs/http.md):
`policy_version` on every object and chunk, `token_ids` on every choice, `prompt_token_ids` on the
response (in a stream: its first chunk), `raw_logprobs` when asked for; and vLLM's `prompt_logprobs`
on a completion's choices and on a chat completion (scoring.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "epochserve"
    max_model_len: int | None = None
    policy_version: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, num_prompt: int, num_generated: int) -> Usage:
        return cls(prompt_tokens=num_prompt, completion_tokens=num_generated,
                   total_tokens=num_prompt + num_generated)  # fmt: skip


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None: an echoed prompt's first token
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class PromptLogprob(BaseModel):
    """One entry of vLLM's `prompt_logprobs`, keyed by the token's id."""

    logprob: float
    decoded_token: str


class ChoiceExtensions(BaseModel):
    token_ids: list[int]
    raw_logprobs: list[float] | None = None


class CompletionChoice(ChoiceExtensions):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None  # vLLM's; None first


class ResponseExtensions(BaseModel):
    policy_version: int
    prompt_token_ids: list[int] | None = None


class Completion(ResponseExtensions):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(ChoiceExtensions):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletion(ResponseExtensions):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None  # vLLM's (the rendered prompt)


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(ChoiceExtensions):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ResponseExtensions):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = None  # in the first chunk
