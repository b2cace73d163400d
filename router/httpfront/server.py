"""HttpServer: uvicorn serving the HTTP front on the router's own event loop, beside gRPC (or on
the loop of an HTTP front process, front_process.py).

The router process owns its signals (router/server.py stops gRPC and HTTP together after the
drain), so uvicorn's own signal handling is switched off. The port is bound here, so that a taken
port fails the router in one line (PortInUseError) like its other ports. `reuse_port`: the port is
shared with the router's other HTTP front processes (SO_REUSEPORT: the kernel spreads connections
over them); only they set it, so nothing else can join.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from epochserve.net import port_errors

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 5  # open connections get this long once the router has drained


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the router's signal handlers stay in place


class HttpServer:
    def __init__(self, app: Any, host: str, port: int, *, reuse_port: bool = False) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Bind and serve; returns the bound port once uvicorn accepts connections."""
        sock = _listen(self.host, self.port, self.reuse_port)
        # http="auto": httptools (a dependency: C parsing and writing, the cheaper per request and
        # per streamed write), h11 where it is missing.
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off",
            timeout_graceful_shutdown=STOP_TIMEOUT_SECONDS,
        )  # fmt: skip
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, STOP_TIMEOUT_SECONDS + 1)
        except (TimeoutError, Exception) as exc:
            logger.warning("HTTP server stop: %r", exc)


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = bound_socket(host, port, reuse_port)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def bound_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to host:port, not listening; PortInUseError when the port is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with port_errors(port):
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
    return sock
