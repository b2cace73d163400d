"""Front: what every route shares (the backend, the text codec, the served model's name, the Admin
service's address when the router has one), and the server-sent events a stream is written as."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import StreamingResponse

from epochserve.router.httpfront.backend import Backend
from epochserve.router.httpfront.codec import Codec
from epochserve.router.httpfront.errors import HttpError, http_failure
from epochserve.router.httpfront.run import Generation
from epochserve.router.httpfront.translate import Translated
from epochserve.router.waiting import Deadline

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AdminAccess:
    """Where the control plane's Admin service is, and the bearer token it takes (weight updates)."""

    address: str
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Front:
    backend: Backend
    codec: Codec
    model_name: str  # the one model /v1/models lists and requests must name
    admin: AdminAccess | None = None  # None: routes that start rollouts answer 503

    async def start(self, translated: Translated, timeout: float | None) -> Generation:
        """Run the request; return once its first message came (raises what it failed with before)."""
        generation = Generation(self.backend, translated, self.codec, Deadline.after(timeout))
        await generation.start()
        return generation

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise HttpError(
                404,
                f"model {model!r} does not exist: this server serves {self.model_name!r}",
                "model_not_found",
                "model",
            )


def event_stream(
    batches: AsyncIterator[list[dict[str, Any]]], params: Mapping[str, str], request_id: str
) -> StreamingResponse:
    """SSE: one `data:` line per event, each batch's events written at once, then `data: [DONE]`.
    A failure after the headers went out is sent as one `data: {"error": ...}` event (OpenAI's
    clients raise it), then the stream ends."""

    async def lines() -> AsyncIterator[str]:
        try:
            async for events in batches:
                yield "".join(f"data: {as_json(event)}\n\n" for event in events)
        except Exception as exc:
            yield f"data: {as_json(http_failure(exc, params, request_id).body())}\n\n"
            return
        yield "data: [DONE]\n\n"

    return sse_response(lines())


def as_json(event: dict[str, Any]) -> str:
    """Compact JSON, UTF-8 as is (the shape pydantic and starlette write)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def sse_response(lines: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
