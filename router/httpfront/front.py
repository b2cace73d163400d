"""Front: what every route shares (the backend, the text codec, the served model's name), and the
server-sent events a stream is written as."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from epochserve.router.httpfront.backend import Backend
from epochserve.router.httpfront.codec import Codec
from epochserve.router.httpfront.errors import HttpError, http_failure

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Front:
    backend: Backend
    codec: Codec
    model_name: str  # the one model /v1/models lists and requests must name

    def check_model(self, model: str) -> None:
        if model != self.model_name:
            raise HttpError(
                404,
                f"model {model!r} does not exist: this server serves {self.model_name!r}",
                "model_not_found",
                "model",
            )


def event_stream(
    events: AsyncIterator[BaseModel], params: Mapping[str, str], request_id: str
) -> StreamingResponse:
    """SSE: one `data:` line per event, then `data: [DONE]`. A failure after the headers went out
    is sent as one `data: {"error": ...}` event (OpenAI's clients raise it), then the stream ends."""

    async def lines() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {event.model_dump_json(exclude_none=True)}\n\n"
        except Exception as exc:
            yield f"data: {json.dumps(http_failure(exc, params, request_id).body())}\n\n"
            return
        yield "data: [DONE]\n\n"

    return StreamingResponse(lines(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
