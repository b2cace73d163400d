"""Dispatcher: find a worker for a pinned request, waiting in the version's queue when none can
take it, and reserve that worker's load (docs/design.md §4 step 3).

Versions move under a waiting request. A request pinned to v-1 whose version no READY worker
serves any more, while admission is at v, moves to v: if it never ran, nothing of it exists yet;
if it ran (a retry), the move is flagged (Diagnostics.rerun_under_new_version). Requests only
ever move up, so I2 holds for them too. A move forgets the workers the request failed on: they
failed the old version, and serve the new one afresh.
"""

from __future__ import annotations

import contextlib
import logging

from epochserve.errors import RequestAbortedError
from epochserve.router.admission import Admission
from epochserve.router.attempt import FlowState
from epochserve.router.errors import NoWorkerError
from epochserve.router.load import Reservation
from epochserve.router.policies import Candidate, Policy, RouteRequest
from epochserve.router.registry import WorkerHandle, WorkerRegistry
from epochserve.router.waiting import Deadline, WaitBudget

logger = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self, admission: Admission, registry: WorkerRegistry, policy: Policy, max_wait_seconds: float
    ) -> None:
        self.admission = admission
        self.registry = registry
        self.policy = policy
        self.max_wait_seconds = max_wait_seconds

    async def acquire(
        self, route: RouteRequest, state: FlowState, deadline: Deadline
    ) -> tuple[WorkerHandle, Reservation]:
        """A worker serving state.version (moved up as the module docstring says) and the
        reservation of the request's load on it.

        Raises QueueFullError (the version's queue is full), WaitDeadlineError, NoWorkerError
        (no worker within the router's longest wait), RequestAbortedError (Abort while waiting).
        """
        budget: WaitBudget | None = None
        with contextlib.ExitStack() as queue_slot:
            queued_on: int | None = None
            while True:
                if state.is_abort_requested:
                    raise RequestAbortedError(f"request {state.request_id} aborted before it started")
                self._move_up_if_retired(state)
                candidates = self.registry.candidates(state.version, state.excluded)
                if candidates:
                    return self._reserve(route, candidates, state.version)
                if queued_on != state.version:  # (re)enter the queue of the version waited for
                    queue_slot.close()
                    bounded = state.num_attempts == 0 and queued_on is None
                    queue_slot.enter_context(
                        self.admission.queued(state.request_id, state.version, bounded=bounded)
                    )
                    queued_on = state.version
                budget = budget or WaitBudget(state.request_id, deadline, self.max_wait_seconds)
                what = f"a worker serving policy version {state.version}"
                timeout = budget.next_timeout(what, NoWorkerError(f"request {state.request_id}: no {what}"))
                retry_in = self.registry.seconds_until_retry(state.version)
                await self.admission.changes.wait(timeout if retry_in is None else min(timeout, retry_in))

    def _move_up_if_retired(self, state: FlowState) -> None:
        current = self.admission.version
        if current is None or state.version >= current or self.registry.serves(state.version):
            return
        logger.info(
            "request %s: no worker serves v%d any more; moved to v%d",
            state.request_id,
            state.version,
            current,
        )
        if state.num_attempts:
            state.is_rerun = True
        state.move_to(current)

    def _reserve(
        self, route: RouteRequest, candidates: list[WorkerHandle], version: int
    ) -> tuple[WorkerHandle, Reservation]:
        views = [Candidate(h.worker_id, h.load.tokens, h.load.seqs) for h in candidates]
        chosen = self.policy.choose(route, views)
        handle = candidates[views.index(chosen)]
        reservation = Reservation(
            handle.load, route.cost_tokens, route.n, lambda: self.registry.released(handle), version
        )
        return handle, reservation
