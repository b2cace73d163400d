"""WorkerSession: the router's one long-lived Session stream to a worker, shared by its requests.

Why: a gRPC call's setup and teardown per request is most of the latency a router adds (W4 in
docs/benchmarks.md); over a Session a request costs one message each way. The worker runs each
request on the stream exactly as a Generate call (worker/session.py).

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
import contextlib
import itertools
import logging
from collections.abc import Coroutine
from typing import Any, TypeAlias

import grpc

from epochserve.proto.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from epochserve.router.waiting import Deadline

logger = logging.getLogger(__name__)

# What a call's queue holds: the worker's messages, the error that ended the stream, or the
# deadline's wake-up.
Message: TypeAlias = worker_pb2.SessionResponse | grpc.aio.AioRpcError | None
_DEADLINE_PASSED = None
_STATUS_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """The error a call would raise with this status."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class WorkerSession:
    """Use from the router's event loop only. `close()` ends the stream (every open call fails)."""

    def __init__(self, stub: worker_pb2_grpc.WorkerStub, worker_id: str) -> None:
        self.stub = stub
        self.worker_id = worker_id
        self._call: grpc.aio.StreamStreamCall | None = None
        self._queues: dict[int, asyncio.Queue[Message]] = {}  # open calls by stream_id
        self._stream_ids = itertools.count(1)
        self._write_lock = asyncio.Lock()  # one write at a time on the call
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, request: common_pb2.GenerateRequest, deadline: Deadline) -> SessionCall:
        """Send `request` (pinned) to the worker; raises AioRpcError(UNAVAILABLE) if it cannot."""
        call = self._call if self._call is not None else self._open()
        stream_id = next(self._stream_ids)
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queues[stream_id] = queue
        remaining = deadline.remaining()
        message = worker_pb2.SessionRequest(
            stream_id=stream_id,
            generate=request,
            timeout_ms=0 if remaining is None else max(1, round(remaining * 1000)),
        )
        try:
            await self._write(call, message)
        except Exception as exc:
            self._queues.pop(stream_id, None)
            raise rpc_error(grpc.StatusCode.UNAVAILABLE, f"session to {self.worker_id}: {exc!r}") from exc
        num_samples = request.n if request.HasField("n") else 1
        return SessionCall(self, stream_id, queue, num_samples, deadline)

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _open(self) -> grpc.aio.StreamStreamCall:
        call = self.stub.Session()
        self._call = call
        self._spawn(self._read(call))
        logger.debug("session to %s opened", self.worker_id)
        return call

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        """Route the worker's messages to their calls until the stream ends; then fail the rest."""
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                queue = self._queues.get(message.stream_id)
                if queue is not None:  # else: a call that was cancelled or timed out
                    queue.put_nowait(message)
            why = "the worker ended the session"
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
        finally:
            if self._call is call:
                self._call = None
            lost = rpc_error(grpc.StatusCode.UNAVAILABLE, f"session to worker {self.worker_id} lost ({why})")
            for queue in self._queues.values():
                queue.put_nowait(lost)
            self._queues.clear()
            logger.info("session to %s ended: %s", self.worker_id, why)

    def _cancel(self, stream_id: int, reason: str) -> None:
        """Forget the call and tell the worker to stop it (in the background: never blocks)."""
        if self._queues.pop(stream_id, None) is None or self._call is None:
            return  # finished, failed, or its stream is gone (the worker aborted it then)
        message = worker_pb2.SessionRequest(
            stream_id=stream_id, cancel=worker_pb2.SessionCancel(reason=reason)
        )
        self._spawn(self._write_quietly(self._call, message))

    def _finish(self, stream_id: int) -> None:
        self._queues.pop(stream_id, None)

    async def _write(self, call: grpc.aio.StreamStreamCall, message: worker_pb2.SessionRequest) -> None:
        async with self._write_lock:
            await call.write(message)

    async def _write_quietly(
        self, call: grpc.aio.StreamStreamCall, message: worker_pb2.SessionRequest
    ) -> None:
        with contextlib.suppress(Exception):  # a broken stream: the worker aborts everything anyway
            await self._write(call, message)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


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
