"""Admission: the version new requests are pinned to, and the bounded per-version queues.

I2 (docs/design.md §1) is decided here. `switch_to(v)` moves admission to committed version v; from
that call on, `pin()` returns >= v for every new request, and the router acks v to the control
plane only after the call (router/epochs.py). Versions only go up.

A request waits ("is queued") while its version is not committed yet (min_policy_version ahead of
the cluster, or the router's first epoch not read yet) and while no worker serving its version
can take it (router/dispatch.py). Each version's queue holds at most `max_queue` requests; one
more gets QueueFullError (RESOURCE_EXHAUSTED with a retry hint). Requests that never wait are not
counted: a queue is only what the router holds back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from epochserve.errors import RequestAbortedError
from epochserve.router.errors import NoWorkerError, QueueFullError
from epochserve.router.waiting import Changes, Deadline, WaitBudget

logger = logging.getLogger(__name__)

QueueDepthHook = Callable[[int, int], None]  # (version, requests waiting for it)


@dataclass(frozen=True, slots=True)
class QueueLimits:
    max_queue: int = 1024  # requests waiting per version
    max_wait_seconds: float = 120.0  # longest a request waits without a deadline of its own
    retry_after_seconds: float = 1.0  # the hint sent with RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if self.max_queue < 0 or self.max_wait_seconds <= 0 or self.retry_after_seconds < 0:
            raise ValueError("max_queue >= 0, max_wait_seconds > 0 and retry_after_seconds >= 0 required")


class Admission:
    """Use from the router's event loop only."""

    def __init__(self, limits: QueueLimits, changes: Changes, on_depth: QueueDepthHook | None = None) -> None:
        self.limits = limits
        self.changes = changes
        self.version: int | None = None  # None until the first committed epoch was read
        self._waiting: dict[int, int] = {}
        self._on_depth = on_depth or (lambda version, depth: None)

    def switch_to(self, version: int) -> bool:
        """Pin every later request to >= `version`. False (and nothing changes) for a version not
        above the current one: versions never go back."""
        if self.version is not None and version <= self.version:
            return False
        logger.info("admission: new requests now pin to policy version %d (was %s)", version, self.version)
        self.version = version
        self.changes.notify()
        return True

    def depth(self, version: int) -> int:
        """Requests waiting for `version` now."""
        return self._waiting.get(version, 0)

    @contextmanager
    def queued(self, request_id: str, version: int, *, bounded: bool = True) -> Iterator[None]:
        """Count the request in `version`'s queue while the block runs. bounded=False counts a
        request that was admitted already (moved to a newer version), so it is never refused."""
        depth = self._waiting.get(version, 0)
        if bounded and depth >= self.limits.max_queue:
            raise QueueFullError(request_id, version, self.limits.max_queue, self.limits.retry_after_seconds)
        self._set_depth(version, depth + 1)
        try:
            yield
        finally:
            self._set_depth(version, self._waiting[version] - 1)

    async def pin(
        self,
        request_id: str,
        min_version: int | None,
        deadline: Deadline,
        *,
        bounded: bool = True,
        is_aborted: Callable[[], bool] = lambda: False,
    ) -> int:
        """The version a request runs on: the committed version, once it is >= min_version.

        Waits (queued under min_version; `bounded` as in queued()) while it is not; raises
        QueueFullError when that queue is full, WaitDeadlineError when the deadline passes first,
        NoWorkerError after the router's longest wait, RequestAbortedError once is_aborted() (checked
        at every change)."""
        wanted = min_version or 0
        if self.version is not None and self.version >= wanted:
            return self.version
        budget = WaitBudget(request_id, deadline, self.limits.max_wait_seconds)
        what = f"policy version {wanted} to be committed"
        with self.queued(request_id, wanted, bounded=bounded):
            logger.debug("request %s waits for %s (now %s)", request_id, what, self.version)
            while self.version is None or self.version < wanted:
                if is_aborted():
                    raise RequestAbortedError(f"request {request_id} aborted before it started")
                timeout = budget.next_timeout(what, NoWorkerError(f"request {request_id}: no {what}"))
                await self.changes.wait(timeout)
        return self.version

    def _set_depth(self, version: int, depth: int) -> None:
        if depth:
            self._waiting[version] = depth
        else:
            self._waiting.pop(version, None)
        self._on_depth(version, depth)
