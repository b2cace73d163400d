"""A private asyncio event loop on a daemon thread: what lets a blocking facade run asyncio code.

The blocking GenerationClient (client/generation.py) runs an AsyncGenerationClient on one of
these. Coroutines are submitted with asyncio.run_coroutine_threadsafe and waited for with a bound;
a wait that ends early (its bound passed, KeyboardInterrupt) cancels the coroutine's task and lets
the loop process that cancellation before it returns, so whatever the coroutine ran (an RPC) is
cancelled too. `stop` runs a last coroutine, cancels what is left, and joins the thread, each step
bounded. The loop belongs to the process that made it: after a fork the child refuses to use it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

SETTLE_SECONDS = 5.0  # at most this long for the loop to process a cancellation


class LoopClosedError(RuntimeError):
    """The loop was stopped (or belongs to the parent of a forked process): nothing runs on it."""


class LoopWaitTimeout(Exception):
    """A coroutine did not finish within the wait's bound; it was cancelled."""


class LoopThread:
    """One event loop running forever on one daemon thread, until `stop`."""

    def __init__(self, name: str) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stopped = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return not self._stopped and self._pid == os.getpid()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """coro's result (or exception), run on the loop; wait at most `timeout` seconds (None: no
        bound). Raises LoopWaitTimeout when the bound passes, concurrent.futures.CancelledError when
        the coroutine was cancelled on the loop (by `stop`), LoopClosedError after `stop`."""
        future = self._submit(coro)
        try:
            finished, _ = concurrent.futures.wait((future,), timeout)
        except BaseException:  # KeyboardInterrupt, SystemExit: the coroutine must not go on
            self._cancel(future)
            raise
        if not finished and self._cancel(future):
            raise LoopWaitTimeout(f"no result within {timeout} s")
        return future.result()

    def stop(self, last: Coroutine[Any, Any, object] | None = None, timeout: float = 10.0) -> None:
        """Run `last` (its errors are dropped), cancel every task left, and end the thread; each
        step waits `timeout` seconds at most. Idempotent; in a forked child it only marks the loop
        stopped (its thread lives in the parent)."""
        with self._lock:
            stopped, self._stopped = self._stopped, True
        if stopped or self._pid != os.getpid() or threading.current_thread() is self._thread:
            if last is not None:
                last.close()
            if not stopped and threading.current_thread() is self._thread:
                self._loop.stop()  # the thread's own finalizer: no waiting on oneself
            return
        try:
            future = asyncio.run_coroutine_threadsafe(_wind_down(last), self._loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking call from the client's own event loop thread would deadlock")
        if self._pid != os.getpid():
            coro.close()
            raise RuntimeError(
                f"this client's event loop runs in process {self._pid}, the parent of this forked"
                " process: make a new client here"
            )
        with self._lock:  # nothing is submitted once stop() began: every future submitted ends
            if self._stopped:
                coro.close()
                raise LoopClosedError("the event loop is stopped")
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _cancel(self, future: concurrent.futures.Future[Any]) -> bool:
        """Cancel the task behind future and wait (bounded) until the loop has processed that;
        False when it had finished already."""
        if not future.cancel():
            return False
        if self.running:
            with contextlib.suppress(Exception):
                # Callbacks run in order: the task's cancellation is handled before this one ends.
                asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self._loop).result(SETTLE_SECONDS)
        return True

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            try:
                left = asyncio.all_tasks(self._loop)
                for task in left:
                    task.cancel()
                if left:
                    self._loop.run_until_complete(asyncio.wait(left, timeout=SETTLE_SECONDS))
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.run_until_complete(self._loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                self._loop.close()


async def _wind_down(last: Coroutine[Any, Any, object] | None) -> None:
    """On the loop, before it stops: `last`, then cancel the other tasks and close the async
    generators still open (a stream the caller stopped reading)."""
    if last is not None:
        with contextlib.suppress(Exception):
            await last
    loop = asyncio.get_running_loop()
    others = asyncio.all_tasks(loop) - {asyncio.current_task()}
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=SETTLE_SECONDS)
    await loop.shutdown_asyncgens()
