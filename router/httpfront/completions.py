"""POST /v1/completions: a text (or token id) prompt, no chat template (docs/http.md).

Scoring: `echo` puts the prompt before each choice's text and, with `logprobs: 0`, its tokens'
logprobs before the generated ones (the first null, as OpenAI's); vLLM's `prompt_logprobs: 0` adds
them to each choice in vLLM's shape; `max_tokens: 0` with either generates nothing (scoring.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from epochserve.errors import InvalidRequestError
from epochserve.router.httpfront.front import Front, event_stream
from epochserve.router.httpfront.requests import CompletionRequest
from epochserve.router.httpfront.run import Generation
from epochserve.router.httpfront.samples import Piece
from epochserve.router.httpfront.scoring import (
    NO_ALTERNATIVES,
    check_prompt_logprobs,
    echo_logprobs,
    joined,
    vllm_prompt_logprobs,
)
from epochserve.router.httpfront.shapes import (
    Choice,
    Json,
    choice_fields,
    compact,
    completion_logprobs,
    gather,
    usage,
)
from epochserve.router.httpfront.translate import PARAMS, translate


def params_of(body: CompletionRequest) -> dict[str, str]:
    prompt = "prompt_token_ids" if body.prompt_token_ids is not None else "prompt"
    return {**PARAMS, "prompt_token_ids": prompt, "sampling.num_top_logprobs": "logprobs"}


def prompt_of(front: Front, body: CompletionRequest) -> list[int]:
    """The prompt's ids. One prompt per request: a response names one policy version, and the
    prompts of a batch could run on two."""
    if body.prompt_token_ids is not None:
        return body.prompt_token_ids
    prompt = body.prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if prompt is None:
        raise InvalidRequestError("prompt", "is required (or prompt_token_ids)")
    if isinstance(prompt, str):
        return front.codec.encode(prompt)
    if all(isinstance(t, int) for t in prompt):
        return [int(t) for t in prompt]  # type: ignore[arg-type]
    raise InvalidRequestError("prompt", "one prompt per request (send a request for each)")


def echoed_text(front: Front, body: CompletionRequest, prompt: list[int]) -> str:
    """The prompt as `echo` returns it: the client's own text, else its ids decoded."""
    text = body.prompt[0] if isinstance(body.prompt, list) and len(body.prompt) == 1 else body.prompt
    if body.prompt_token_ids is None and isinstance(text, str):
        return text
    return front.codec.decode(prompt)


def refuse_unsupported(body: CompletionRequest) -> None:
    if body.suffix:
        raise InvalidRequestError("suffix", "is not supported")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequestError("best_of", "is not supported (only equal to n)")
    # Prompt tokens come with their own logprob only (scoring.py): refuse asking for alternatives.
    if body.echo and body.logprobs:
        raise InvalidRequestError("logprobs", f"with echo only 0 ({NO_ALTERNATIVES}), got {body.logprobs}")
    check_prompt_logprobs(body.prompt_logprobs)


def returns_prompt_logprobs(body: CompletionRequest) -> bool:
    return (body.echo and body.logprobs is not None) or body.prompt_logprobs is not None


async def create(front: Front, body: CompletionRequest) -> Json | object:
    """The Completion, or a StreamingResponse of its chunks; raises what the request failed with."""
    front.check_model(body.model)
    refuse_unsupported(body)
    prompt = prompt_of(front, body)
    translated = translate(
        body,
        prompt,
        max_tokens=body.max_tokens,
        num_top_logprobs=body.logprobs or 0,
        limits=front.backend.limits,
        return_prompt_logprobs=returns_prompt_logprobs(body),
        is_score_only=body.max_tokens == 0 and (body.echo or body.prompt_logprobs is not None),
    )
    generation = await front.start(translated, body.timeout)
    reply = _Reply(front, body, generation, prompt, int(time.time()))
    if body.stream:
        return event_stream(_chunks(reply), params_of(body), generation.request_id)
    choices = gather([piece async for piece in generation.pieces()], translated.n)
    echo = echoed_text(front, body, prompt) if body.echo else ""
    return reply.completion(
        [reply.choice(c, echo=echo) for c in choices],
        usage=usage(len(prompt), generation.num_generated_tokens),
        prompt_token_ids=prompt,
    )


@dataclass(frozen=True, slots=True)
class _Reply:
    """What every completion (or chunk) of one request shares."""

    front: Front
    body: CompletionRequest
    generation: Generation
    prompt: list[int]
    created: int

    def completion(self, choices: list[Json], **fields: Any) -> Json:
        """A Completion (a stream's chunk is one too): `fields` are usage and prompt_token_ids."""
        return {
            "id": f"cmpl-{self.generation.request_id}",
            "object": "text_completion",
            "created": self.created,
            "model": self.front.model_name,
            "choices": choices,
            "usage": None,
            "policy_version": self.generation.policy_version or 0,
            "prompt_token_ids": None,
            **fields,
        }

    def choice(self, part: Piece | Choice, *, echo: str, is_first: bool = True, offset: int = 0) -> Json:
        """A whole choice, or a streamed chunk's. The first of a sample (`is_first`) carries what the
        prompt adds: `echo` (its text, "" without echo) and its logprobs; `offset`: the choice's text
        sent before `part`."""
        front, body, prompt = self.front, self.body, self.prompt
        pieces = part.pieces if isinstance(part, Choice) else [part]
        prompt_logprobs = [x for p in pieces for x in p.prompt_logprobs]  # only in a sample's first piece
        echo = echo if is_first else ""
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(front.codec, pieces, body.logprobs, offset + len(echo))
            if body.echo and is_first:
                logprobs = joined(echo_logprobs(front.codec, prompt, prompt_logprobs), logprobs)
        vllm_scores = None
        if body.prompt_logprobs is not None and is_first:
            vllm_scores = vllm_prompt_logprobs(front.codec, prompt, prompt_logprobs)
        return {
            "text": echo + part.text,
            "logprobs": logprobs,
            "prompt_logprobs": vllm_scores,
            **choice_fields(part, body.return_raw_logprobs, body.return_routed_experts),
        }


async def _chunks(reply: _Reply) -> AsyncIterator[list[Json]]:
    """One chunk per choice that has new output at each wake-up, written together."""
    body, generation = reply.body, reply.generation
    echo = echoed_text(reply.front, body, reply.prompt) if body.echo else ""
    offsets = [0] * len(generation.samples)  # text sent so far per choice (logprobs' text_offset)
    started: set[int] = set()  # choices whose first chunk (with what the prompt adds) went out
    first = True
    async for batch in generation.batches():
        chunks = []
        for piece in batch:
            is_first = piece.index not in started
            started.add(piece.index)
            choice = reply.choice(piece, echo=echo, is_first=is_first, offset=offsets[piece.index])
            offsets[piece.index] += len(choice["text"])
            if choice["logprobs"] is not None:
                choice["logprobs"] = compact(choice["logprobs"])
            prompt_ids = reply.prompt if first else None
            chunks.append(compact(reply.completion([compact(choice)], prompt_token_ids=prompt_ids)))
            first = False
        yield chunks
    if body.stream_options is not None and body.stream_options.include_usage:
        counts = usage(len(reply.prompt), generation.num_generated_tokens)
        yield [compact(reply.completion([], usage=counts))]
