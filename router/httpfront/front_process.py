"""One HTTP front process of a router started with --http-processes N > 1 (front_pool.py starts
them): the same app as the router's own front (build_app, the tokenizer, API key, body limit,
Admin access), on the router's HTTP port shared with its siblings (SO_REUSEPORT), with a
GrpcBackend to the router's Generation service on a private Unix socket.

Why processes: the front's Python work per output token (detokenizing, JSON, SSE) on the router's
one event loop left gRPC and HTTP sharing one core; each process brings a core of its own, and the
router keeps only its gRPC path.

The router owns this process's lifetime: it says when to stop (a message on `conn`, after its
drain, so in-flight streams end first), and SIGINT/SIGTERM are ignored meanwhile (a Ctrl-C reaches
the whole process group; the router drains before its front processes may stop). The router gone
(its end of `conn` closed, or the kernel's parent-death signal) ends it too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from epochserve.lifetime import die_with_parent
from epochserve.router.httpfront.app import build_app
from epochserve.router.httpfront.codec import load_codec
from epochserve.router.httpfront.front import AdminAccess, Front
from epochserve.router.httpfront.grpc_backend import GrpcBackend
from epochserve.router.httpfront.server import HttpServer

logger = logging.getLogger(__name__)

PROCESS_HEADER = b"x-epochserve-http-process"  # on every response: the pid that answered it
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s[http-%(process)d]: %(message)s"
ROUTER_TIMEOUT_SECONDS = 30.0  # the router answers GetPolicy within this at start, or this fails


@dataclass(frozen=True)
class FrontProcessSpec:
    """What one front process needs (picklable: it crosses the spawn)."""

    index: int
    host: str
    port: int  # the router's HTTP port, already chosen (never 0 here)
    router_target: str  # "unix:PATH" of the router's Generation service
    router_pid: int
    tokenizer: Path | None
    model_name: str
    max_body_bytes: int
    api_key: str | None = field(default=None, repr=False)
    admin: AdminAccess | None = None
    metrics_url: str | None = None  # the router's metrics endpoint, relayed on /metrics
    log_level: int = logging.INFO


def run_front_process(spec: FrontProcessSpec, conn: Connection) -> None:
    """The process's target: serve until the router says stop; exit 1 if it could not start."""
    die_with_parent()
    if os.getppid() != spec.router_pid:  # the router died before the kernel watched it
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=spec.log_level, format=LOG_FORMAT)
    try:
        import uvloop  # as the router: ~15-20% less CPU per message

        code = uvloop.run(_serve(spec, conn))
    except ImportError:
        code = asyncio.run(_serve(spec, conn))
    sys.exit(code)


async def _serve(spec: FrontProcessSpec, conn: Connection) -> int:
    backend = GrpcBackend(spec.router_target)
    try:
        try:
            await backend.start(ROUTER_TIMEOUT_SECONDS)
            codec = await asyncio.to_thread(load_codec, spec.tokenizer)
            front = Front(backend, codec, spec.model_name, spec.admin)
            app = build_app(
                front, max_body_bytes=spec.max_body_bytes, api_key=spec.api_key, metrics_url=spec.metrics_url
            )
            server = HttpServer(ProcessHeader(app), spec.host, spec.port, reuse_port=True)
            await server.start()
        except Exception as exc:  # whatever it is, the router must hear why (it fails its start)
            logger.exception("HTTP front process %d could not start", spec.index)
            conn.send(("failed", f"HTTP front process {spec.index}: {exc!r}"))
            return 1
        conn.send(("ready", os.getpid()))
        await _stop_requested(conn)
        await server.stop()
        return 0
    finally:
        await backend.close()


async def _stop_requested(conn: Connection) -> None:
    """Until the router sends anything on `conn` or closes it (it exited)."""
    await readable(conn)


async def readable(conn: Connection, timeout: float | None = None) -> None:
    """Until `conn` has a message or its other end closed (TimeoutError after `timeout`), watched by
    the event loop (no thread blocked in recv)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(conn.fileno())


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


class ProcessHeader:
    """ASGI middleware: names this process on every response (x-epochserve-http-process: PID), so
    that clients and tests can tell the processes apart."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.header = (PROCESS_HEADER, str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self.header]
            await send(message)

        await self.app(scope, receive, tagged)
