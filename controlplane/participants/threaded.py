"""Participants for threaded programs (a worker driving a torch engine from threads).

Each Sync* participant runs its asyncio participant on a private event loop in a daemon thread and
exposes the same API as blocking, thread-safe methods with timeouts. Every call that waits takes a
`timeout` in seconds and raises TimeoutError when it passes.

    p = SyncWorkerParticipant(etcd, "prod", WorkerIdentity("w0", "10.0.0.5:7100"), serving_version=3)
    p.start()
    while running:                                  # the engine thread
        d = p.next_directive(timeout=0)             # non-blocking between engine steps
        ...
        p.report_staged(v, checksum)
    p.close()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from epochserve.controlplane.participants.directives import Directive
from epochserve.controlplane.participants.router import ClusterView, RouterParticipant
from epochserve.controlplane.participants.worker import WorkerIdentity, WorkerParticipant
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.records import DrainReport

T = TypeVar("T")
_CALL_TIMEOUT = 10.0  # seconds, default for reports and acks
_SLACK = 1.0  # extra seconds for the loop thread to hand a result back


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run `coroutine` on the loop and wait for its result; TimeoutError (and the coroutine
        cancelled) after `timeout` seconds. Exceptions of the coroutine propagate."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no result within {timeout}s") from None

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _Threaded:
    """Owns the loop thread and the asyncio participant built on it."""

    def __init__(self, name: str, build: Callable[[], Any]) -> None:
        self._thread = LoopThread(name)
        self.is_closed = False  # set when close() begins

        async def construct() -> Any:  # asyncio objects belong to the loop that runs them
            return build()

        self._inner = self._thread.call(construct(), _CALL_TIMEOUT)

    @property
    def is_registered(self) -> bool:
        return bool(self._inner.is_registered)

    def start(self, timeout: float = 30.0) -> None:
        """Connect and register; raises TimeoutError, DuplicateParticipantError."""
        self._thread.call(self._inner.start(timeout), timeout + _SLACK)

    def flush(self, timeout: float = _CALL_TIMEOUT) -> None:
        """Wait until every report made so far is written to etcd."""
        self._thread.call(self._inner.flush(timeout), timeout + _SLACK)

    def close(self, timeout: float = _CALL_TIMEOUT) -> None:
        """Deregister and stop the loop thread."""
        self.is_closed = True
        try:
            self._thread.call(self._inner.close(), timeout)
        finally:
            self._thread.stop()


class SyncWorkerParticipant(_Threaded):
    """WorkerParticipant with blocking, thread-safe methods (see worker.py for the protocol)."""

    def __init__(self, etcd: EtcdConfig, cluster: str, identity: WorkerIdentity, **kwargs: Any) -> None:
        """kwargs: those of WorkerParticipant (serving_version, fingerprint, lease_ttl, ...)."""
        super().__init__(
            f"participant-{identity.worker_id}", lambda: WorkerParticipant(etcd, cluster, identity, **kwargs)
        )

    @property
    def can_accept_work(self) -> bool:
        return bool(self._inner.can_accept_work)

    @property
    def serving_version(self) -> int:
        return int(self._inner.serving_version)

    def next_directive(self, timeout: float | None = 0) -> Directive | None:
        """The next directive within `timeout` seconds (0: do not wait; None: wait forever); None
        once closed (a worker shutting down deregistered first, and its engine keeps stepping)."""
        if self.is_closed:
            return None
        wait = None if timeout is None else timeout + _SLACK
        try:
            result: Directive | None = self._thread.call(self._inner.next_directive(timeout), wait)
        except (RuntimeError, TimeoutError):  # the loop stopped under the call: closed meanwhile?
            if self.is_closed:
                return None
            raise
        return result

    def report_staged(self, version: int, checksum: str, timeout: float = _CALL_TIMEOUT) -> bool:
        return bool(self._thread.call(self._inner.report_staged(version, checksum), timeout))

    def report_serving(
        self, version: int, fingerprint: str, retiring: int | None = None, timeout: float = _CALL_TIMEOUT
    ) -> bool:
        return bool(self._thread.call(self._inner.report_serving(version, fingerprint, retiring), timeout))

    def report_retired(self, version: int, fingerprint: str, timeout: float = _CALL_TIMEOUT) -> bool:
        return bool(self._thread.call(self._inner.report_retired(version, fingerprint), timeout))

    def report_drain(self, report: DrainReport, timeout: float = _CALL_TIMEOUT) -> bool:
        return bool(self._thread.call(self._inner.report_drain(report), timeout))

    def report_failure(self, version: int, reason: str, timeout: float = _CALL_TIMEOUT) -> bool:
        return bool(self._thread.call(self._inner.report_failure(version, reason), timeout))

    def report_released(self, version: int, timeout: float = _CALL_TIMEOUT) -> bool:
        return bool(self._thread.call(self._inner.report_released(version), timeout))


class SyncRouterParticipant(_Threaded):
    """RouterParticipant with blocking, thread-safe methods (see router.py)."""

    def __init__(self, etcd: EtcdConfig, cluster: str, router_id: str, address: str, **kwargs: Any) -> None:
        super().__init__(
            f"participant-{router_id}", lambda: RouterParticipant(etcd, cluster, router_id, address, **kwargs)
        )

    def view(self) -> ClusterView:
        view: ClusterView = self._inner.view()  # a frozen snapshot: safe to read from any thread
        return view

    def wait_for_epoch(self, above: int, timeout: float) -> int:
        """Block until the committed epoch exceeds `above`; returns it (TimeoutError otherwise)."""
        inner: RouterParticipant = self._inner
        view = self._thread.call(
            inner.wait_view(lambda v: v.committed_epoch > above, timeout), timeout + _SLACK
        )
        return view.committed_epoch

    def ack_epoch(self, version: int, timeout: float = _CALL_TIMEOUT) -> bool:
        return bool(self._thread.call(self._inner.ack_epoch(version), timeout))
