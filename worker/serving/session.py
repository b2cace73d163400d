"""The worker's end of a Session: many requests of one router over one long-lived stream.

A router keeps one Session per worker (router/session.py) because setting up and tearing down a
gRPC call per request is most of the latency a router adds on a small CPU. The stream is either
the Worker.Session gRPC call (`serve_grpc`) or the session link, the same messages framed on a
TCP/TLS connection (worker/serving/link.py); SessionServer does not care which: it takes each
incoming message in `handle` and writes through the `send` it was given. Each request on the
stream runs exactly as a Generate call would (WorkerService.admit / responses: same validation,
same statuses, same aborts), its messages tagged with the stream_id the router gave it.

Failure modes, each ending every affected request in the engine (its blocks freed):
- the router cancels one request (client gone, deadline): it is aborted, nothing more is sent;
- the request's own timeout (the router's remaining deadline) passes: DEADLINE_EXCEEDED;
- the stream ends (router gone, connection lost): every request on it is aborted (`close`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import grpc

from epochserve.errors import DeadlineExceededError
from epochserve.proto.status import Failure, failure_of
from epochserve.proto.v1 import common_pb2, worker_pb2

if TYPE_CHECKING:
    from epochserve.worker.serving.service import WorkerService

logger = logging.getLogger(__name__)


class RequestFailed(Exception):
    """A request ends with `failure` instead of finishing: a Generate call aborts with it
    (proto/status.py's `abort`), a Session stream sends it as the request's SessionError."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.details)
        self.failure = failure


# Writes one message on the stream; raises when the stream is gone.
Send = Callable[[worker_pb2.SessionResponse], Awaitable[None]]


class SessionServer:
    """Serves one Session stream: `handle` each message the router sends, then `close()` once the
    stream ended (it returns after every request it started has been aborted or has finished)."""

    def __init__(self, service: WorkerService, send: Send) -> None:
        self.service = service
        self._send = send
        self._tasks: dict[int, asyncio.Task[None]] = {}  # by stream_id
        self._cancel_reasons: dict[int, str] = {}
        self._writes: set[asyncio.Task[None]] = set()  # pongs and early errors (referenced: not GC'd)

    def handle(self, message: worker_pb2.SessionRequest) -> None:
        if message.HasField("generate"):
            self._start(message)
        elif message.HasField("cancel"):
            self._cancel(message.stream_id, message.cancel.reason)
        elif message.HasField("ping"):
            pong = worker_pb2.SessionResponse(pong=message.ping)
            self._spawn_write(self._send(pong))

    async def close(self) -> None:
        for stream_id in list(self._tasks):
            self._cancel(stream_id, "the router's session ended")
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _start(self, message: worker_pb2.SessionRequest) -> None:
        stream_id = message.stream_id
        if stream_id in self._tasks:
            detail = f"stream_id {stream_id} is already in use on this session"
            self._spawn_write(self._write_error(stream_id, Failure(grpc.StatusCode.INVALID_ARGUMENT, detail)))
            return
        timeout = message.timeout_ms / 1000 if message.timeout_ms else None
        task = asyncio.ensure_future(self._run(stream_id, message.generate, timeout))
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _: self._forget(stream_id, task))

    def _forget(self, stream_id: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(stream_id) is task:
            del self._tasks[stream_id]
        self._cancel_reasons.pop(stream_id, None)
        if not task.cancelled() and task.exception() is not None:  # a write on a broken stream
            logger.info("session stream %d ended: %r", stream_id, task.exception())

    def _cancel(self, stream_id: int, reason: str) -> None:
        task = self._tasks.get(stream_id)
        if task is not None and not task.done():
            self._cancel_reasons[stream_id] = reason
            task.cancel()

    async def _run(self, stream_id: int, request: common_pb2.GenerateRequest, timeout: float | None) -> None:
        def abort_reason() -> str:
            return self._cancel_reasons.get(stream_id, "request failed")

        try:
            parsed = self.service.admit(request)
            async with asyncio.timeout(timeout):
                async with contextlib.aclosing(self.service.responses(parsed, abort_reason)) as responses:
                    async for response in responses:
                        await self._send(worker_pb2.SessionResponse(stream_id=stream_id, response=response))
        except RequestFailed as exc:
            await self._write_error(stream_id, exc.failure)
        except TimeoutError:
            detail = f"request {request.request_id}: deadline exceeded on the worker"
            await self._write_error(stream_id, failure_of(DeadlineExceededError(detail)))

    def _spawn_write(self, write: Awaitable[None]) -> None:
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # a broken stream: nothing to add

    async def _write_error(self, stream_id: int, failure: Failure) -> None:
        """The Session's abort of one request: the status a Generate call would end with, as a message
        (trailing metadata has no place on the stream)."""
        error = worker_pb2.SessionError(code=failure.code.value[0], details=failure.details)
        await self._send(worker_pb2.SessionResponse(stream_id=stream_id, error=error))


async def serve_grpc(service: WorkerService, context: grpc.aio.ServicerContext) -> None:
    """Serve a Worker.Session call until the router ends it."""
    write_lock = asyncio.Lock()  # one write at a time on the call

    async def send(message: worker_pb2.SessionResponse) -> None:
        async with write_lock:
            # A request's timeout or cancel must not cut a write short: gRPC would still be sending
            # it when the request's next write (its error) starts. Finish it, then let the
            # cancellation through.
            write = asyncio.ensure_future(context.write(message))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await write
                raise

    server = SessionServer(service, send)
    try:
        while (message := await context.read()) is not grpc.aio.EOF:
            assert isinstance(message, worker_pb2.SessionRequest)
            server.handle(message)
    finally:
        await server.close()
