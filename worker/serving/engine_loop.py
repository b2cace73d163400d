"""EngineLoop: drives one Engine on a dedicated thread, the only thread that touches it.

Other threads talk to it through a command queue: submit a request with a sink for its outputs,
abort a request, or run a function on the engine between two steps (stats, version changes).
Commands run between steps, so nothing changes under a running step.

Failure mode: an exception inside a step means the engine's state can no longer be trusted. The
loop then fails every in-flight request (their sinks receive EngineStoppedError, which clients see
as UNAVAILABLE), stops, and records
the error in `failure`; the server turns NOT_SERVING and exits non-zero.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TypeVar

from epochserve.errors import EpochserveError, InvalidRequestError
from epochserve.proto.convert import ParsedGenerateRequest
from epochserve.worker.engine.engine import Engine, StartDecision
from epochserve.worker.engine.outputs import SequenceOutput
from epochserve.worker.serving.held_requests import HeldRequests

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Receives each output of its request, or an exception that ends the request. Called on the
# engine thread: it must not block (e.g. loop.call_soon_threadsafe(queue.put_nowait, item)).
Sink = Callable[[SequenceOutput | BaseException], None]
Hook = Callable[[Engine], list[SequenceOutput]]


class EngineStoppedError(EpochserveError):
    """The engine loop is not running (stopped, or failed: see the cause)."""


@dataclass(slots=True)
class _Pending:
    sink: Sink
    num_unfinished: int


@dataclass(frozen=True, slots=True)
class _Command:
    run: Callable[[], None]
    fail: Callable[[BaseException], None]  # told instead when the loop stops before running it


class EngineLoop:
    def __init__(
        self,
        engine: Engine,
        idle_wait_seconds: float = 0.05,
        hooks: list[Hook] | None = None,
        max_hold_seconds: float = 30.0,
    ) -> None:
        self.engine = engine
        # Run between steps, on the engine thread (e.g. the rollout agent); outputs are dispatched.
        self.hooks: list[Hook] = hooks or []
        self.held = HeldRequests(max_hold_seconds)
        self._commands: queue.Queue[_Command] = queue.Queue()
        self._pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._idle_wait = idle_wait_seconds
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self.failure: BaseException | None = None

    # ---- called from any thread ------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def submit(self, request: ParsedGenerateRequest, sink: Sink) -> None:
        """Queue a request; its outputs (or an exception, e.g. a duplicate id) go to sink."""
        self._ensure_running()

        def add() -> None:
            try:
                if request.request_id in self._pending:
                    raise InvalidRequestError("request_id", f"{request.request_id!r} is already in flight")
                if self.engine.start_decision(request) is StartDecision.HOLD:
                    self.held.hold(request, lambda exc: self._fail_pending(request.request_id, exc))
                else:
                    self.engine.add_request(request)
            except EpochserveError as exc:
                sink(exc)
                return
            self._pending[request.request_id] = _Pending(sink, request.n)

        self._commands.put(_Command(add, sink))

    def abort(self, request_id: str, reason: str) -> Future[bool]:
        """Abort a request; the future says whether it was in flight. Its sink gets ABORT finishes."""
        return self.call(lambda engine: self._abort(request_id, reason))

    def abort_all(self, reason: str) -> Future[int]:
        """Abort every request in flight (shutdown); the future holds how many there were."""
        return self.call(
            lambda engine: sum(self._abort(request_id, reason) for request_id in list(self._pending))
        )

    def call(self, fn: Callable[[Engine], T]) -> Future[T]:
        """Run fn(engine) on the engine thread between steps; the future holds its result."""
        future: Future[T] = Future()
        if not self.is_running:
            future.set_exception(EngineStoppedError("engine loop is not running"))
            return future

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self.engine))
                except Exception as exc:
                    future.set_exception(exc)

        def fail(exc: BaseException) -> None:
            if not future.done():
                future.set_exception(exc)

        self._commands.put(_Command(run, fail))
        return future

    # ---- the engine thread ------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._run_commands(block=not self.engine.has_work())
                for hook in self.hooks:
                    self._dispatch(hook(self.engine))
                if self.held:
                    self.held.release(self.engine)
                if self.engine.has_work():
                    self._dispatch(self.engine.step())
                else:
                    self.engine.idle()
        except BaseException as exc:
            logger.exception("engine step failed; failing %d requests", len(self._pending))
            self.failure = exc
            # The worker can no longer serve: every request in flight ends UNAVAILABLE.
            error = EngineStoppedError(f"worker failed: {exc}")
            error.__cause__ = exc
            for pending in self._pending.values():
                pending.sink(error)
            self._pending.clear()
        finally:
            self._stop.set()
            self._fail_queued_commands()
            if self.failure is None:
                self._close_engine()

    def _close_engine(self) -> None:
        try:
            self.engine.close()
        except Exception:
            logger.exception("closing the engine failed")

    def _run_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=self._idle_wait) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        command.run()
        while True:
            try:
                self._commands.get_nowait().run()
            except queue.Empty:
                return

    def _dispatch(self, outputs: list[SequenceOutput]) -> None:
        for output in outputs:
            pending = self._pending.get(output.request_id)
            if pending is None:
                continue
            pending.sink(output)
            if output.finish is not None:
                pending.num_unfinished -= 1
                if pending.num_unfinished == 0:
                    del self._pending[output.request_id]

    def _abort(self, request_id: str, reason: str) -> bool:
        if request_id not in self._pending:
            return False
        if not self.held.abort(request_id, reason):
            self._dispatch(self.engine.abort_request(request_id, reason))
        return True

    def _fail_pending(self, request_id: str, error: BaseException) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is not None:
            pending.sink(error)

    def _fail_queued_commands(self) -> None:
        """Tell the senders of commands that will never run (a late one is caught by their timeouts)."""
        error = EngineStoppedError("engine loop stopped")
        error.__cause__ = self.failure
        while True:
            try:
                self._commands.get_nowait().fail(error)
            except queue.Empty:
                return

    def _ensure_running(self) -> None:
        if not self.is_running:
            raise EngineStoppedError("engine loop is not running") from self.failure
