"""The worker's session link: Worker.Session's messages as frames on TCP (or TLS) connections.

Each connection a router opens is one Session stream, served by a SessionServer exactly as the gRPC
Session call is (worker/serving/session.py); only the transport differs (epochserve.proto.framing says why
and how). The port is reported in GetWorkerInfoResponse.session_port, and routers dial it on the
host of the worker's advertised address.

Shutdown: `close()` stops listening and drops every connection; the SessionServers then abort what
is still running on them (the routers see the link end: UNAVAILABLE, or a re-run elsewhere).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from epochserve.net import port_errors
from epochserve.proto.framing import FramedLink
from epochserve.proto.v1 import worker_pb2
from epochserve.worker.serving.session import SessionServer

if TYPE_CHECKING:
    from epochserve.worker.serving.service import WorkerService

logger = logging.getLogger(__name__)


class LinkServer:
    """Listens for routers' session links; `start()` then `port`, `close()` at shutdown."""

    def __init__(self, service: WorkerService, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        self.service = service
        self.host = host
        self.requested_port = port
        self.tls = tls
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[FramedLink[worker_pb2.SessionRequest]] = set()
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        with port_errors(self.requested_port):
            self._server = await loop.create_server(
                self._accept, self.host, self.requested_port, ssl=self.tls
            )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.close("the worker is shutting down")
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _accept(self) -> FramedLink[worker_pb2.SessionRequest]:
        """One new connection: its link, feeding a SessionServer of its own."""

        async def send(message: worker_pb2.SessionResponse) -> None:
            link.send(message)
            await link.drain()

        def on_lost(why: str) -> None:
            self._links.discard(link)
            logger.info("session link ended: %s", why)
            task = asyncio.ensure_future(server.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

        server = SessionServer(self.service, send)
        link = FramedLink(worker_pb2.SessionRequest.FromString, server.handle, on_lost)
        self._links.add(link)
        return link
