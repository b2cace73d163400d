"""ASGI middleware that refuses a request before any route sees it: a missing or wrong API key (401)
and a body over the stated limit (413). Neither reaches a worker. Refusals take the shape of the
route's API (error_shapes.py)."""

from __future__ import annotations

import hmac
from typing import Any

from epochserve.router.httpfront.error_shapes import failure_response, is_anthropic
from epochserve.router.httpfront.errors import HttpFailure

Scope = dict[str, Any]
OPEN_PATHS = ("/health", "/metrics")  # probes and scrapers carry no key
DRAIN_LIMIT = 64 * 2**20  # bytes of an oversized body read (and dropped) before the 413


class ApiKeyCheck:
    """`Authorization: Bearer KEY` (on Anthropic's routes also `x-api-key: KEY`, as its clients send
    it), compared in constant time (hmac.compare_digest)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._key):
            return await self.app(scope, receive, send)
        anthropic = is_anthropic(scope["path"])
        if anthropic and hmac.compare_digest(headers.get(b"x-api-key", b"").strip(), self._key):
            return await self.app(scope, receive, send)
        how = "x-api-key: KEY or Authorization: Bearer KEY" if anthropic else "Authorization: Bearer KEY"
        failure = HttpFailure(401, f"missing or invalid API key ({how})", "invalid_api_key")
        refusal = failure_response(failure, scope["path"], {"WWW-Authenticate": "Bearer"})
        await refusal(scope, receive, send)


class BodyLimit:
    """Reads the body whole (the routes would anyway) and refuses it above `max_bytes`."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(scope, receive, send, more)
            if not more:
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # http.disconnect, when the client goes
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Any, send: Any, more: bool = True) -> None:
        # Read the rest (dropped) before answering: a client still sending when the connection
        # closes sees a reset, not the 413. Past DRAIN_LIMIT it is cut off.
        drained = 0
        while more and drained < DRAIN_LIMIT:
            message = await receive()
            drained += len(message.get("body", b""))
            more = message["type"] == "http.request" and message.get("more_body", False)
        message = f"the request body is over {self.max_bytes} bytes"
        failure = HttpFailure(413, message, "request_too_large")
        await failure_response(failure, scope["path"], {"Connection": "close"})(scope, receive, send)
