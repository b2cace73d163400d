"""POST /v1/chat/completions: messages through the model's chat template (docs/http.md).

Tools are passed to the template, which renders them into the prompt; tool calls in the output are
not parsed out of the text (yet): they arrive as the assistant's content.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from epochserve.errors import InvalidRequestError
from epochserve.router.httpfront.front import Front, event_stream
from epochserve.router.httpfront.requests import ChatCompletionRequest, ChatMessage
from epochserve.router.httpfront.run import Generation
from epochserve.router.httpfront.samples import Piece
from epochserve.router.httpfront.scoring import check_prompt_logprobs, vllm_prompt_logprobs
from epochserve.router.httpfront.shapes import Json, chat_logprobs, choice_fields, compact, gather, usage
from epochserve.router.httpfront.translate import PARAMS, translate


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


def render(
    front: Front,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    """The prompt's ids: `messages` through the model's chat template (also Anthropic's route)."""
    if not messages:
        raise InvalidRequestError("messages", "at least one message is required")
    rendered = [template_message(m) for m in messages]
    return front.codec.chat_prompt(rendered, tools, add_generation_prompt, template_kwargs or {})


def prompt_of(front: Front, body: ChatCompletionRequest) -> list[int]:
    if body.prompt_token_ids is not None:
        return body.prompt_token_ids
    return render(front, body.messages, body.tools, body.add_generation_prompt, body.chat_template_kwargs)


def num_top_logprobs(body: ChatCompletionRequest) -> int:
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs", "needs logprobs: true")
    return body.top_logprobs or 0


async def create(front: Front, body: ChatCompletionRequest) -> Json | object:
    """The ChatCompletion, or a StreamingResponse of its chunks; raises what the request failed with."""
    front.check_model(body.model)
    check_prompt_logprobs(body.prompt_logprobs)
    prompt = prompt_of(front, body)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    translated = translate(
        body,
        prompt,
        max_tokens=max_tokens,
        num_top_logprobs=num_top_logprobs(body),
        limits=front.backend.limits,
        return_prompt_logprobs=body.prompt_logprobs is not None,
    )
    generation = await front.start(translated, body.timeout)
    reply = _Reply(front, body, generation, prompt, int(time.time()))
    if body.stream:
        return event_stream(_chunks(reply), params_of(body), generation.request_id)
    choices = gather([piece async for piece in generation.pieces()], translated.n)
    return {
        "id": f"chatcmpl-{generation.request_id}",
        "object": "chat.completion",
        "created": reply.created,
        "model": front.model_name,
        "choices": [
            {
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(front.codec, c.pieces) if body.logprobs else None,
                **choice_fields(c, body.return_raw_logprobs, body.return_routed_experts),
            }
            for c in choices
        ],
        "usage": usage(len(prompt), generation.num_generated_tokens),
        "policy_version": generation.policy_version or 0,
        "prompt_token_ids": prompt,
        "prompt_logprobs": reply.prompt_logprobs(choices[0].pieces),
    }


@dataclass(frozen=True, slots=True)
class _Reply:
    """What every chat completion (or chunk) of one request shares."""

    front: Front
    body: ChatCompletionRequest
    generation: Generation
    prompt: list[int]
    created: int

    def prompt_logprobs(self, pieces: list[Piece]) -> list[dict[str, Json] | None] | None:
        """vLLM's `prompt_logprobs` of a chat completion: one list for the response (every sample
        scores the same prompt), from the first piece of a sample among `pieces`."""
        if self.body.prompt_logprobs is None:
            return None
        scores = [x for p in pieces for x in p.prompt_logprobs]
        return vllm_prompt_logprobs(self.front.codec, self.prompt, scores)

    def chunk(self, choices: list[Json], **fields: Any) -> Json:
        """A streamed chunk, unset fields left out; `fields`: usage, the prompt's fields."""
        return compact({
            "id": f"chatcmpl-{self.generation.request_id}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.front.model_name,
            "choices": choices,
            "policy_version": self.generation.policy_version or 0,
            **fields,
        })  # fmt: skip


async def _chunks(reply: _Reply) -> AsyncIterator[list[Json]]:
    """One chunk per choice that has new output at each wake-up, written together."""
    body, codec = reply.body, reply.front.codec
    started: set[int] = set()  # choices whose first chunk (with the role) went out
    first = True
    async for batch in reply.generation.batches():
        chunks = []
        for piece in batch:
            role = None if piece.index in started else "assistant"
            started.add(piece.index)
            logprobs = None
            if body.logprobs and piece.token_ids:
                logprobs = {"content": chat_logprobs(codec, [piece])["content"]}
            choice = {
                "delta": compact({"role": role, "content": piece.text if piece.text or role else None}),
                "logprobs": logprobs,
                **choice_fields(piece, body.return_raw_logprobs, body.return_routed_experts),
            }
            prompt_fields: dict[str, Any] = {}
            if first:  # the prompt's fields, once (the first piece is its sample's first)
                prompt_fields = {
                    "prompt_token_ids": reply.prompt,
                    "prompt_logprobs": reply.prompt_logprobs([piece]),
                }
            chunks.append(reply.chunk([compact(choice)], **prompt_fields))
            first = False
        yield chunks
    if body.stream_options is not None and body.stream_options.include_usage:
        yield [reply.chunk([], usage=usage(len(reply.prompt), reply.generation.num_generated_tokens))]
