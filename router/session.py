"""WorkerSession: the router's one long-lived Session stream to a worker, shared by its requests.

Why: a gRPC call's setup and teardown per request is most of the latency a router adds (W4 in
docs/benchmarks.md); over a Session a request costs one message each way. The worker runs each
request on the stream exactly as a Generate call (worker/serving/session.py). The stream is the worker's
session link when it serves one (on `link_host`, at the port its GetWorkerInfo reports when the
stream opens, so a worker restarted on another port is found), else the Worker.Session gRPC call
(router/session_link.py: the two transports, the link's keepalive). A link that cannot be opened
(refused, TLS failure, no greeting) falls back to gRPC Session for LINK_RETRY_SECONDS; then an
idle gRPC Session is replaced by the link when it opens.

`start(request, deadline)` returns a SessionCall that reads like the unary-stream call it
replaces: `read()` gives the request's messages, then None after its n-th finish, and raises
grpc.aio.AioRpcError with the status the call would have ended with (the worker's error for this
request; DEADLINE_EXCEEDED when the deadline passes first; UNAVAILABLE when the stream is lost);
`cancel()` stops it on the worker. Messages are routed by a stream_id unique to each SessionCall,
so a request run again under its request_id never receives the old run's late messages.

Failure modes: a broken stream (worker killed, connection reset, channel closed) fails every call
on it with UNAVAILABLE (the router may re-run those that sent nothing); the next `start` opens a
new stream. A write that cannot be sent fails that call with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TypeAlias

import grpc

from epochserve.channels import ClientTls
from epochserve.proto.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from epochserve.router.session_link import (
    DEFAULT_KEEPALIVE,
    GrpcTransport,
    Keepalive,
    LinkTransport,
    Transport,
)
from epochserve.router.waiting import Deadline

logger = logging.getLogger(__name__)

# What a call's queue holds: the worker's messages, the error that ended the stream, or the
# deadline's wake-up.
Message: TypeAlias = worker_pb2.SessionResponse | grpc.aio.AioRpcError | None
_DEADLINE_PASSED = None
LINK_RETRY_SECONDS = 30.0  # after a session link failed to open, gRPC Session this long
LINK_OPEN_TIMEOUT_SECONDS = 5.0  # GetWorkerInfo for the link's port
_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a call would raise with this status."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class WorkerSession:
    """Use from the router's event loop only. `close()` ends the stream (every open call fails)."""

    def __init__(
        self,
        stub: worker_pb2_grpc.WorkerStub,
        worker_id: str,
        *,
        link_host: str | None = None,
        tls: ClientTls | None = None,
        keepalive: Keepalive = DEFAULT_KEEPALIVE,
    ) -> None:
        self.stub = stub
        self.worker_id = worker_id
        self.tls = tls  # of the session link: the router's TLS to workers
        self.keepalive = keepalive
        self.link_host = link_host  # where the worker's session link is; None: gRPC Session only
        self._transport: Transport | None = None
        self._opening = asyncio.Lock()  # one transport opened at a time
        self._link_retry_at = 0.0  # loop time: a failed link is not dialled again before
        self._queues: dict[int, asyncio.Queue[Message]] = {}  # open calls by stream_id
        self._stream_ids = itertools.count(1)
        self._cancels: set[asyncio.Task[None]] = set()  # cancel messages being sent (referenced: not GC'd)

    @property
    def transport_kind(self) -> str:
        """ "link", "grpc", or "" while nothing is open (for logs and tests)."""
        if self._transport is None:
            return ""
        return "link" if isinstance(self._transport, LinkTransport) else "grpc"

    async def start(self, request: common_pb2.GenerateRequest, deadline: Deadline) -> SessionCall:
        """Send `request` (pinned) to the worker; raises AioRpcError(UNAVAILABLE) if it cannot."""
        stream_id = next(self._stream_ids)
        remaining = deadline.remaining()
        message = worker_pb2.SessionRequest(
            stream_id=stream_id,
            generate=request,
            timeout_ms=0 if remaining is None else max(1, round(remaining * 1000)),
        )
        queue: asyncio.Queue[Message] = asyncio.Queue()
        try:
            transport = await self._ready_transport()
            self._queues[stream_id] = queue
            await transport.send(message)
        except Exception as exc:
            self._queues.pop(stream_id, None)
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"session to {self.worker_id}: {exc!r}") from exc
        num_samples = request.n if request.HasField("n") else 1
        return SessionCall(self, stream_id, queue, num_samples, deadline)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._lost(self._transport, "the router closed the session")
        for task in list(self._cancels):
            task.cancel()
        await asyncio.gather(*self._cancels, return_exceptions=True)

    async def _ready_transport(self) -> Transport:
        transport = self._transport
        if transport is not None and not self._wants_link(transport):
            return transport
        async with self._opening:
            current = self._transport
            if current is not None and not self._wants_link(current):
                return current  # opened while this call waited
            link = await self._open_link()
            if link is not None and current is not None:
                if self._queues:  # calls started on the gRPC Session meanwhile: keep it
                    link.close()
                    return current
                self._transport = None  # idle: nothing is lost
                current.close()
            if link is not None:
                self._transport = link
            elif current is None:
                logger.debug("gRPC session to %s opened", self.worker_id)
                self._transport = GrpcTransport(self.stub, self._route, self._lost)
            assert self._transport is not None
            return self._transport

    def _wants_link(self, transport: Transport) -> bool:
        """A gRPC Session with no calls open, while a link may be there and is worth trying."""
        return (
            isinstance(transport, GrpcTransport)
            and self.link_host is not None
            and not self._queues
            and asyncio.get_running_loop().time() >= self._link_retry_at
        )

    async def _open_link(self) -> LinkTransport | None:
        """The worker's session link, or None (logged; not tried again for LINK_RETRY_SECONDS)."""
        loop = asyncio.get_running_loop()
        if self.link_host is None or loop.time() < self._link_retry_at:
            return None
        host, port = self.link_host, 0
        try:
            info = await self.stub.GetWorkerInfo(
                worker_pb2.GetWorkerInfoRequest(), timeout=LINK_OPEN_TIMEOUT_SECONDS
            )
            port = info.session_port
            if not port:
                self._link_retry_at = loop.time() + LINK_RETRY_SECONDS
                return None  # the worker serves none
            transport = await LinkTransport.open(
                host, port, self.tls, self._route, self._lost, lambda: bool(self._queues), self.keepalive
            )
            logger.debug("session link to %s at %s:%d opened", self.worker_id, host, port)
            return transport
        except (OSError, ConnectionError, TimeoutError, grpc.aio.AioRpcError) as exc:
            self._link_retry_at = loop.time() + LINK_RETRY_SECONDS
            logger.warning(
                "session link to %s at %s:%d failed (%r): using gRPC Session for %g s",
                *(self.worker_id, host, port, exc, LINK_RETRY_SECONDS),
            )
            return None

    def _route(self, message: worker_pb2.SessionResponse) -> None:
        queue = self._queues.get(message.stream_id)
        if queue is not None:  # else: a pong, or a call that was cancelled or timed out
            queue.put_nowait(message)

    def _lost(self, transport: Transport, why: str) -> None:
        """Fail every open call (their transport ended); the next start opens a new one."""
        if transport is not self._transport:
            return  # one replaced while idle
        self._transport = None
        lost = rpc_error(grpc.StatusCode.UNAVAILABLE, f"session to worker {self.worker_id} lost ({why})")
        for queue in self._queues.values():
            queue.put_nowait(lost)
        self._queues.clear()
        logger.info("session to %s ended: %s", self.worker_id, why)

    def _cancel(self, stream_id: int, reason: str) -> None:
        """Forget the call and tell the worker to stop it (in the background: never blocks)."""
        transport = self._transport
        if self._queues.pop(stream_id, None) is None or transport is None:
            return  # finished, failed, or its stream is gone (the worker aborted it then)
        message = worker_pb2.SessionRequest(
            stream_id=stream_id, cancel=worker_pb2.SessionCancel(reason=reason)
        )
        task = asyncio.ensure_future(transport.send(message))
        self._cancels.add(task)
        task.add_done_callback(self._cancel_sent)

    def _cancel_sent(self, task: asyncio.Task[None]) -> None:
        self._cancels.discard(task)
        if not task.cancelled():
            task.exception()  # a broken stream: the worker aborted the request there

    def _finish(self, stream_id: int) -> None:
        self._queues.pop(stream_id, None)


class SessionCall:
    """One request on a WorkerSession; the shape of a unary-stream call (module docstring)."""

    def __init__(
        self,
        session: WorkerSession,
        stream_id: int,
        queue: asyncio.Queue[Message],
        num_samples: int,
        deadline: Deadline,
    ) -> None:
        self._session = session
        self._stream_id = stream_id
        self._queue = queue
        self._held: list[Message] = []  # at most one: taken by ready_chunks(), read() returns it first
        self._num_unfinished = num_samples
        self._is_over = False
        # One timer for the whole call, not a wait_for per message (a task and a timer each); when
        # it fires it wakes a waiting read, and no read returns a message after it.
        remaining = deadline.remaining()
        self._deadline_passed = remaining is not None and remaining <= 0
        self._timer = (
            None if remaining is None else asyncio.get_running_loop().call_later(remaining, self._expire)
        )

    async def read(self) -> common_pb2.GenerateResponse | None:
        """The request's next message; None after its last finish."""
        if self._num_unfinished == 0:
            self._end()
            return None
        if self._held:
            message = self._held.pop()
        else:
            message = _DEADLINE_PASSED if self._deadline_passed else await self._queue.get()
        if message is _DEADLINE_PASSED:
            self.cancel("deadline exceeded")
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        if isinstance(message, grpc.aio.AioRpcError):
            self._is_over = True
            self._stop_timer()
            raise message
        if message.HasField("error"):
            self._end()
            code = _STATUS_BY_NUMBER.get(message.error.code, grpc.StatusCode.UNKNOWN)
            raise rpc_error(code, message.error.details)
        if message.response.HasField("finish"):
            self._num_unfinished -= 1
        return message.response

    def ready_chunks(self) -> list[common_pb2.GenerateResponse]:
        """The chunk messages already queued behind the last read, in order, without waiting; the
        first other item (a finish, an error, the deadline) stays for the next read()."""
        chunks: list[common_pb2.GenerateResponse] = []
        while not self._held and not self._queue.empty():
            message = self._queue.get_nowait()
            if isinstance(message, worker_pb2.SessionResponse) and message.response.HasField("chunk"):
                chunks.append(message.response)
            else:
                self._held.append(message)
        return chunks

    def cancel(self, reason: str = "cancelled by the router") -> None:
        """Stop the request on the worker unless it ended; a no-op afterwards."""
        if not self._is_over:
            self._is_over = True
            self._stop_timer()
            self._session._cancel(self._stream_id, reason)

    def _expire(self) -> None:
        self._deadline_passed = True
        self._queue.put_nowait(_DEADLINE_PASSED)

    def _end(self) -> None:
        self._is_over = True
        self._stop_timer()
        self._session._finish(self._stream_id)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
