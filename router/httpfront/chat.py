"""POST /v1/chat/completions: messages through the model's chat template (docs/http.md).

Tools are passed to the template, which renders them into the prompt; tool calls in the output are
not parsed out of the text (yet): they arrive as the assistant's content.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import BaseModel

from epochserve.errors import InvalidRequestError
from epochserve.router.httpfront.front import Front, event_stream
from epochserve.router.httpfront.requests import ChatCompletionRequest, ChatMessage
from epochserve.router.httpfront.responses import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    Delta,
    Usage,
)
from epochserve.router.httpfront.run import Generation
from epochserve.router.httpfront.shapes import chat_logprobs, gather
from epochserve.router.httpfront.translate import PARAMS, translate
from epochserve.router.waiting import Deadline


def params_of(body: ChatCompletionRequest) -> dict[str, str]:
    prompt = "prompt_token_ids" if body.prompt_token_ids is not None else "messages"
    max_tokens = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    return {**PARAMS, "prompt_token_ids": prompt, "sampling.max_tokens": max_tokens,
            "sampling.num_top_logprobs": "top_logprobs"}  # fmt: skip


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates take it: content as one string (text parts joined)."""
    fields = message.model_dump(exclude_none=True)
    if isinstance(message.content, list):
        if any(part.type != "text" for part in message.content):
            raise InvalidRequestError("messages", "only text content parts are supported")
        fields["content"] = "".join(part.text or "" for part in message.content)
    return fields


def prompt_of(front: Front, body: ChatCompletionRequest) -> list[int]:
    if body.prompt_token_ids is not None:
        return body.prompt_token_ids
    if not body.messages:
        raise InvalidRequestError("messages", "at least one message is required")
    messages = [template_message(m) for m in body.messages]
    return front.codec.chat_prompt(
        messages, body.tools, body.add_generation_prompt, body.chat_template_kwargs or {}
    )


def num_top_logprobs(body: ChatCompletionRequest) -> int:
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs", "needs logprobs: true")
    return body.top_logprobs or 0


async def create(front: Front, body: ChatCompletionRequest) -> BaseModel | object:
    """The ChatCompletion, or a StreamingResponse of its chunks; raises what the request failed with."""
    front.check_model(body.model)
    prompt = prompt_of(front, body)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    translated = translate(
        body,
        prompt,
        max_tokens=max_tokens,
        num_top_logprobs=num_top_logprobs(body),
        limits=front.backend.limits,
    )
    generation = Generation(front.backend, translated, front.codec, Deadline.after(body.timeout))
    await generation.start()
    created = int(time.time())
    if body.stream:
        return event_stream(
            _chunks(front, body, generation, prompt, created), params_of(body), generation.request_id
        )
    choices = gather([piece async for piece in generation.pieces()], translated.n)
    num_generated = generation.num_generated_tokens
    return ChatCompletion(
        id=f"chatcmpl-{generation.request_id}",
        created=created,
        model=front.model_name,
        choices=[
            ChatChoice(
                index=c.index,
                message=AssistantMessage(content=c.text),
                logprobs=chat_logprobs(front.codec, c.pieces) if body.logprobs else None,
                finish_reason=c.finish_reason,
                token_ids=c.token_ids,
                raw_logprobs=c.raw_logprobs if body.return_raw_logprobs else None,
            )
            for c in choices
        ],
        usage=Usage(
            prompt_tokens=len(prompt),
            completion_tokens=num_generated,
            total_tokens=len(prompt) + num_generated,
        ),
        policy_version=generation.policy_version or 0,
        prompt_token_ids=prompt,
    )


async def _chunks(
    front: Front, body: ChatCompletionRequest, generation: Generation, prompt: list[int], created: int
) -> AsyncIterator[ChatCompletionChunk]:
    started: set[int] = set()  # choices whose first chunk (with the role) went out

    def chunk(choices: list[ChatChunkChoice], **fields: Any) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=f"chatcmpl-{generation.request_id}",
            created=created,
            model=front.model_name,
            choices=choices,
            policy_version=generation.policy_version or 0,
            **fields,
        )

    first = True
    async for piece in generation.pieces():
        role: Literal["assistant"] | None = None if piece.index in started else "assistant"
        started.add(piece.index)
        choice = ChatChunkChoice(
            index=piece.index,
            delta=Delta(role=role, content=piece.text if piece.text or role else None),
            logprobs=chat_logprobs(front.codec, [piece]) if body.logprobs and piece.token_ids else None,
            finish_reason=piece.finish_reason,
            token_ids=piece.token_ids,
            raw_logprobs=piece.raw_logprobs if body.return_raw_logprobs else None,
        )
        yield chunk([choice], prompt_token_ids=prompt if first else None)
        first = False
    if body.stream_options is not None and body.stream_options.include_usage:
        num_generated = generation.num_generated_tokens
        usage = Usage(
            prompt_tokens=len(prompt),
            completion_tokens=num_generated,
            total_tokens=len(prompt) + num_generated,
        )
        yield chunk([], usage=usage)
