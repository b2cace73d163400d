"""ASGI middleware that refuses a request before any route sees it: a missing or wrong credential
(401) and a body over the stated limit (413). Neither reaches a worker. Refusals take the shape of the
route's API (error_shapes.py).

Each route takes exactly one credential. The routes that start weight rollouts (ADMIN_PATHS) take the
router's admin token (AdminTokenCheck), whether or not an API key is set; every other route but the
probes takes the API key when one is set (ApiKeyCheck). So a client that holds the API key (an RL
environment, an evaluation harness) can never change the weights. A router without an Admin service
has no admin token: there ADMIN_PATHS go unchecked to a route that only answers 503.
"""

from __future__ import annotations

import hmac
from typing import Any

from epochserve.router.httpfront.error_shapes import SGLANG_ADMIN_PATHS, failure_response, is_anthropic
from epochserve.router.httpfront.errors import HttpFailure

Scope = dict[str, Any]
OPEN_PATHS = ("/health", "/metrics")  # probes and scrapers carry no key
ADMIN_PATHS = SGLANG_ADMIN_PATHS  # rollouts: the admin token, never the API key
DRAIN_LIMIT = 64 * 2**20  # bytes of an oversized body read (and dropped) before the 413


def _bearer(headers: dict[bytes, bytes]) -> bytes | None:
    scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
    return given.strip() if scheme.lower() == b"bearer" else None


def _matches(given: bytes | None, secret: bytes) -> bool:
    """Constant time in the secret's contents (hmac.compare_digest), so timing does not leak it."""
    return given is not None and hmac.compare_digest(given, secret)


async def _refuse(scope: Scope, receive: Any, send: Any, message: str, code: str) -> None:
    failure = HttpFailure(401, message, code)
    await failure_response(failure, scope["path"], {"WWW-Authenticate": "Bearer"})(scope, receive, send)


class ApiKeyCheck:
    """`Authorization: Bearer KEY` (on Anthropic's routes also `x-api-key: KEY`, as its clients send
    it) on every route but the probes and ADMIN_PATHS."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS) or scope["path"] in ADMIN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if _matches(_bearer(headers), self._key):
            return await self.app(scope, receive, send)
        anthropic = is_anthropic(scope["path"])
        if anthropic and _matches(headers.get(b"x-api-key", b"").strip(), self._key):
            return await self.app(scope, receive, send)
        how = "x-api-key: KEY or Authorization: Bearer KEY" if anthropic else "Authorization: Bearer KEY"
        await _refuse(scope, receive, send, f"missing or invalid API key ({how})", "invalid_api_key")


class AdminTokenCheck:
    """`Authorization: Bearer TOKEN` on ADMIN_PATHS, TOKEN being the admin token the router itself
    calls the Admin service with: the HTTP route grants no more than the Admin service does."""

    def __init__(self, app: Any, admin_token: str) -> None:
        self.app = app
        self._token = admin_token.encode()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in ADMIN_PATHS:
            return await self.app(scope, receive, send)
        if _matches(_bearer(dict(scope["headers"])), self._token):
            return await self.app(scope, receive, send)
        message = "missing or invalid admin token (Authorization: Bearer ADMIN_TOKEN)"
        await _refuse(scope, receive, send, message, "invalid_admin_token")


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
