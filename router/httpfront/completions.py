"""POST /v1/completions: a text (or token id) prompt, no chat template (docs/http.md)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from pydantic import BaseModel

from epochserve.errors import InvalidRequestError
from epochserve.router.httpfront.front import Front, event_stream
from epochserve.router.httpfront.requests import CompletionRequest
from epochserve.router.httpfront.responses import Completion, CompletionChoice, Usage
from epochserve.router.httpfront.run import Generation
from epochserve.router.httpfront.shapes import choice_fields, completion_logprobs, gather
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


def refuse_unsupported(body: CompletionRequest) -> None:
    if body.echo:
        raise InvalidRequestError("echo", "is not supported")
    if body.suffix:
        raise InvalidRequestError("suffix", "is not supported")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequestError("best_of", "is not supported (only equal to n)")


async def create(front: Front, body: CompletionRequest) -> BaseModel | object:
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
    )
    generation = await front.start(translated, body.timeout)
    created = int(time.time())
    if body.stream:
        chunks = _chunks(front, body, generation, prompt, created)
        return event_stream(chunks, params_of(body), generation.request_id)
    choices = gather([piece async for piece in generation.pieces()], translated.n)
    return Completion(
        id=f"cmpl-{generation.request_id}",
        created=created,
        model=front.model_name,
        choices=[
            CompletionChoice(
                text=c.text,
                logprobs=None
                if body.logprobs is None
                else completion_logprobs(front.codec, c.pieces, body.logprobs),
                **choice_fields(c, body.return_raw_logprobs),
            )
            for c in choices
        ],
        usage=Usage.of(len(prompt), generation.num_generated_tokens),
        policy_version=generation.policy_version or 0,
        prompt_token_ids=prompt,
    )


async def _chunks(
    front: Front, body: CompletionRequest, generation: Generation, prompt: list[int], created: int
) -> AsyncIterator[Completion]:
    offsets = [0] * len(generation.samples)  # text sent so far per choice (logprobs' text_offset)
    first = True
    async for piece in generation.pieces():
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(front.codec, [piece], body.logprobs, offsets[piece.index])
        offsets[piece.index] += len(piece.text)
        choice = CompletionChoice(
            text=piece.text, logprobs=logprobs, **choice_fields(piece, body.return_raw_logprobs)
        )
        yield Completion(
            id=f"cmpl-{generation.request_id}",
            created=created,
            model=front.model_name,
            choices=[choice],
            policy_version=generation.policy_version or 0,
            prompt_token_ids=prompt if first else None,
        )
        first = False
    if body.stream_options is not None and body.stream_options.include_usage:
        yield Completion(
            id=f"cmpl-{generation.request_id}",
            created=created,
            model=front.model_name,
            choices=[],
            usage=Usage.of(len(prompt), generation.num_generated_tokens),
            policy_version=generation.policy_version or 0,
        )
