"""POST /v1/messages: Anthropic's Messages API, rendered with the chat template of
/v1/chat/completions (chat.render), so that the same conversation gives the same prompt ids.

A stream is Anthropic's event sequence: message_start, content_block_start, content_block_delta
(text_delta) per piece of text, content_block_stop, message_delta (stop_reason, usage),
message_stop. Every event carries `policy_version`; the deltas carry their `token_ids`. As on the
OpenAI routes, a delta carries every token the router had at hand (run.py), and the events at hand
together are written together: the opening events with the first delta, the closing ones with the
delta that ended the sample (its stop reason and token count are known then).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from epochserve.errors import InvalidRequestError
from epochserve.router.httpfront import chat
from epochserve.router.httpfront.anthropic_shapes import MessagesRequest, message
from epochserve.router.httpfront.error_shapes import anthropic_error
from epochserve.router.httpfront.errors import http_failure
from epochserve.router.httpfront.front import Front, sse_response
from epochserve.router.httpfront.requests import ChatMessage
from epochserve.router.httpfront.run import Generation
from epochserve.router.httpfront.samples import Piece
from epochserve.router.httpfront.shapes import gather
from epochserve.router.httpfront.translate import PARAMS, translate

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def params_of(body: MessagesRequest) -> dict[str, str]:
    prompt = "prompt_token_ids" if body.prompt_token_ids is not None else "messages"
    return {**PARAMS, "prompt_token_ids": prompt}


def prompt_of(front: Front, body: MessagesRequest) -> list[int]:
    if body.prompt_token_ids is not None:
        return body.prompt_token_ids
    system = [] if body.system is None else [ChatMessage(role="system", content=body.system)]
    turns = [ChatMessage(role=m.role, content=m.content) for m in body.messages]
    if not turns:
        raise InvalidRequestError("messages", "at least one message is required")
    return chat.render(front, system + turns)


def refuse_unsupported(body: MessagesRequest) -> None:
    if body.n not in (None, 1):
        raise InvalidRequestError("n", "a message has one content: send a request per sample")
    if body.tools:
        raise InvalidRequestError("tools", "are not supported on /v1/messages (use /v1/chat/completions)")
    if body.return_routed_experts:
        raise InvalidRequestError(
            "return_routed_experts", "is not supported on /v1/messages (use /v1/chat/completions)"
        )


def stop_of(generation: Generation) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of the request's one sample, once it ended."""
    sample = generation.samples[0]
    if sample.stop_string is not None:
        return "stop_sequence", sample.stop_string
    reason = sample.finish_reason
    return (_STOP_REASONS.get(reason, reason) if reason is not None else None), None


async def create(front: Front, body: MessagesRequest) -> dict[str, Any] | StreamingResponse:
    """The Message, or a stream of its events; raises what the request failed with."""
    front.check_model(body.model)
    refuse_unsupported(body)
    prompt = prompt_of(front, body)
    translated = translate(
        body, prompt, max_tokens=body.max_tokens, num_top_logprobs=0, limits=front.backend.limits
    )
    generation = await front.start(translated, body.timeout)
    if body.stream:
        return _event_stream(_events(front, body, generation, prompt), params_of(body), generation.request_id)
    (choice,) = gather([piece async for piece in generation.pieces()], 1)
    stop_reason, stop_sequence = stop_of(generation)
    return message(
        f"msg_{generation.request_id}",
        choice.text,
        front.model_name,
        stop_reason,
        stop_sequence,
        {"input_tokens": len(prompt), "output_tokens": generation.num_generated_tokens},
        generation.policy_version or 0,
        token_ids=choice.token_ids,
        prompt_token_ids=prompt,
        raw_logprobs=choice.raw_logprobs if body.return_raw_logprobs else None,
    )


async def _events(
    front: Front, body: MessagesRequest, generation: Generation, prompt: list[int]
) -> AsyncIterator[list[dict[str, Any]]]:
    """The stream's events, in lists of those to write together."""
    version = generation.policy_version or 0
    sample = generation.samples[0]

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, **fields, "policy_version": version}

    def closing() -> list[dict[str, Any]]:
        stop_reason, stop_sequence = stop_of(generation)
        return [
            event("content_block_stop", index=0),
            event(
                "message_delta",
                delta={"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                usage={"output_tokens": generation.num_generated_tokens},
            ),
            event("message_stop"),
        ]

    usage = {"input_tokens": len(prompt), "output_tokens": 0}
    start = message(f"msg_{generation.request_id}", None, front.model_name, None, None, usage, version,
                    prompt_token_ids=prompt)  # fmt: skip
    events = [
        event("message_start", message=start),
        event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    ]
    is_closed = False
    try:
        async for batch in generation.batches():
            for piece in batch:  # one sample: at most one piece
                if piece.text or piece.token_ids:
                    events.append(_delta(event, piece, body.return_raw_logprobs))
            if not is_closed and sample.finish_reason is not None:
                events += closing()
                is_closed = True
            if events:
                yield events
                events = []
    except Exception:
        if events:  # the opening events still go out before the error
            yield events
        raise
    if not is_closed:
        yield [*events, *closing()]


def _delta(event: Callable[..., dict[str, Any]], piece: Piece, return_raw_logprobs: bool) -> dict[str, Any]:
    raw = {"raw_logprobs": piece.raw_logprobs} if return_raw_logprobs else {}
    text = {"type": "text_delta", "text": piece.text}
    return event("content_block_delta", index=0, delta=text, token_ids=piece.token_ids, **raw)


def _event_stream(
    events: AsyncIterator[list[dict[str, Any]]], params: dict[str, str], request_id: str
) -> StreamingResponse:
    """Named SSE events (`event: TYPE`, `data: {...}`), each with the policy version, each list of
    them in one write. A failure after the headers went out is Anthropic's `error` event (its client
    raises it), then the stream ends."""

    async def lines() -> AsyncIterator[str]:
        try:
            async for batch in events:
                yield "".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n" for event in batch)
        except Exception as exc:
            error = anthropic_error(http_failure(exc, params, request_id))
            yield f"event: error\ndata: {json.dumps(error)}\n\n"

    return sse_response(lines())
