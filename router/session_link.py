"""The router's transports for a worker's Session: the session link, and gRPC Session behind it.

A WorkerSession (router/session.py) sends SessionRequests and receives SessionResponses over one
transport at a time:
- LinkTransport: the worker's session link (epochserve.proto.framing says why it is cheaper),
  dialled on the worker's host at the port its GetWorkerInfo reports, over TLS when the router
  dials workers over TLS;
- GrpcTransport: the Worker.Session gRPC call, for a worker without a link (or while it cannot be
  reached).
Both deliver each message to `on_message` and call `on_lost(transport, why)` once when they end.

Keepalive on the link (gRPC keeps its channels alive itself, epochserve/channels.py): while calls are
open and nothing arrived for `Keepalive.interval` seconds, the router pings; no answer within
`Keepalive.timeout` closes the link, so a silent worker's calls fail with UNAVAILABLE instead of
hanging. A worker process that dies is noticed at once (its kernel closes the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from epochserve.channels import WORKER_CHANNEL_OPTIONS, ClientTls
from epochserve.proto.framing import FramedLink
from epochserve.proto.v1 import worker_pb2, worker_pb2_grpc

logger = logging.getLogger(__name__)

OnMessage = Callable[[worker_pb2.SessionResponse], None]
OnLost = Callable[["Transport", str], None]
CONNECT_TIMEOUT_SECONDS = 5.0  # TCP connect, TLS handshake and the worker's MAGIC


@dataclass(frozen=True, slots=True)
class Keepalive:
    interval: float  # seconds of silence (with calls open) before a ping
    timeout: float  # seconds a ping may go unanswered before the link is dropped


_CHANNEL = dict(WORKER_CHANNEL_OPTIONS)
# The same pings as the router's gRPC channels to workers.
DEFAULT_KEEPALIVE = Keepalive(
    interval=_CHANNEL["grpc.keepalive_time_ms"] / 1000, timeout=_CHANNEL["grpc.keepalive_timeout_ms"] / 1000
)


class GrpcTransport:
    """The Worker.Session gRPC call."""

    def __init__(self, stub: worker_pb2_grpc.WorkerStub, on_message: OnMessage, on_lost: OnLost) -> None:
        self._call = stub.Session()
        self._write_lock = asyncio.Lock()  # one write at a time on the call
        self._on_message = on_message
        self._on_lost = on_lost
        self._reader = asyncio.ensure_future(self._read())

    async def send(self, message: worker_pb2.SessionRequest) -> None:
        async with self._write_lock:
            await self._call.write(message)

    def close(self) -> None:
        self._call.cancel()

    async def _read(self) -> None:
        try:
            while (message := await self._call.read()) is not grpc.aio.EOF:
                self._on_message(message)
            why = "the worker ended the session"
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
        except asyncio.CancelledError:
            why = "the session was closed"
        self._on_lost(self, why)


class LinkTransport:
    """A session link; `open` it."""

    def __init__(
        self,
        link: FramedLink[worker_pb2.SessionResponse],
        keepalive: Keepalive,
        has_open_calls: Callable[[], bool],
    ) -> None:
        self._link = link
        self._keepalive = keepalive
        self._has_open_calls = has_open_calls
        self._pinger = asyncio.ensure_future(self._ping_while_silent())

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        tls: ClientTls | None,
        on_message: OnMessage,
        on_lost: OnLost,
        has_open_calls: Callable[[], bool],
        keepalive: Keepalive,
    ) -> LinkTransport:
        """Dial, and wait for the worker's greeting; raises OSError/ConnectionError/TimeoutError."""
        opened: list[LinkTransport] = []  # the transport, once there is one to report lost

        def lost(why: str) -> None:
            if opened:
                on_lost(opened[0], why)

        link = FramedLink(worker_pb2.SessionResponse.FromString, on_message, lost)
        loop = asyncio.get_running_loop()
        ssl, server_hostname = (None, None) if tls is None else (tls.ssl_context(), tls.server_name or host)
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            await loop.create_connection(lambda: link, host, port, ssl=ssl, server_hostname=server_hostname)
            try:
                await link.handshake
            except BaseException:
                link.close("no greeting from the worker")
                raise
        transport = cls(link, keepalive, has_open_calls)
        opened.append(transport)
        if link.is_lost:  # lost between the greeting and now: report it like any later loss
            on_lost(transport, "lost while opening")
        return transport

    async def send(self, message: worker_pb2.SessionRequest) -> None:
        self._link.send(message)
        await self._link.drain()

    def close(self) -> None:
        self._pinger.cancel()
        self._link.close("the session was closed")

    async def _ping_while_silent(self) -> None:
        loop = asyncio.get_running_loop()
        interval, timeout = self._keepalive.interval, self._keepalive.timeout
        for sequence in itertools.count(1):
            await asyncio.sleep(interval)
            if self._link.is_lost:
                return
            if not self._has_open_calls() or loop.time() - self._link.last_received < interval:
                continue
            sent_at = loop.time()
            with contextlib.suppress(ConnectionError):
                self._link.send(worker_pb2.SessionRequest(ping=worker_pb2.SessionPing(sequence=sequence)))
            await asyncio.sleep(timeout)
            if self._link.last_received < sent_at:
                self._link.close(f"no answer to a keepalive ping within {timeout:g} s")
                return


Transport = GrpcTransport | LinkTransport
