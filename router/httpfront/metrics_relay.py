"""GET /metrics of an HTTP front process (--http-processes N > 1): the router's Prometheus registry
lives in the router process, so the front answers with what the router's own metrics endpoint
serves (its --metrics-port, else one it opened on 127.0.0.1 for its front processes). Every
process then answers with the same numbers, the router's, as /metrics does in the router process.
The scraper's Accept header is passed on (OpenMetrics or Prometheus text); a router that does not
answer is 503.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

FETCH_TIMEOUT_SECONDS = 10.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class MetricsRelay:
    """An ASGI app (mounted at /metrics) answering with the body of GET `url`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: no proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
        try:
            content_type, body = await asyncio.to_thread(self._fetch, accept)
            status = 200
        except OSError as exc:  # urllib's errors (refused, timed out, an HTTP error status) included
            status, content_type = 503, "text/plain; charset=utf-8"
            body = f"the router's metrics at {self.url} could not be read: {exc}\n".encode()
        headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _fetch(self, accept: str) -> tuple[str, bytes]:
        request = urllib.request.Request(self.url, headers={"Accept": accept} if accept else {})
        with self._opener.open(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            return response.headers.get("Content-Type", "text/plain"), response.read()
