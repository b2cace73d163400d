"""RolloutDriver: the leader's loop that moves the in-flight rollout through its phases.

Level-triggered: on every change of the cluster (and at the phase deadline) it decides from the
whole current state (decide.next_step) rather than from the event that woke it, so a new leader
resumes a rollout left half-way simply by starting this loop — the state in etcd is all it needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from epochserve.controlplane.coordinator.decide import Wait, next_step
from epochserve.controlplane.coordinator.writer import RolloutWriter
from epochserve.controlplane.store.election import Leadership
from epochserve.controlplane.store.state import ClusterState
from epochserve.controlplane.store.watch import ClusterWatch
from epochserve.errors import StoreUnavailableError

log = logging.getLogger(__name__)
_RECHECK = 1.0  # seconds: re-evaluate after a write even if its echo from the watch is late
_PAST_DEADLINE = 0.01  # wake just after a deadline, not just before it


class RolloutDriver:
    """Run with `await driver.run()` while leading; cancel it when stepping down."""

    def __init__(
        self,
        watch: ClusterWatch,
        writer: RolloutWriter,
        leadership: Leadership,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._watch = watch
        self._writer = writer
        self._leadership = leadership
        self._clock = clock

    async def run(self) -> None:
        """Never returns; raises NotLeaderError or LeaseLostError when the lead is lost."""
        state = await self._watch.wait_for(lambda s: True, None)
        resumed = state.in_flight()
        if resumed is not None:
            log.info(
                "leading with rollout v%d in flight (%s): resuming",
                resumed.value.version,
                resumed.value.phase,
            )
        while True:
            self._leadership.lease.check()
            timeout = await self._advance(state)
            state = await self._watch.next_state(state.revision, timeout) or state

    async def _advance(self, state: ClusterState) -> float | None:
        """Act on `state` once; returns how long to wait for a change before looking again."""
        rollout = state.in_flight()
        if rollout is None:
            return None
        now = self._clock()
        step = next_step(rollout.value, state, now)
        if isinstance(step, Wait):
            return None if step.until is None else max(0.0, step.until - now) + _PAST_DEADLINE
        try:
            await self._writer.apply(self._leadership, rollout, state, step)
        except StoreUnavailableError as e:
            log.warning("rollout v%d: cannot write %s yet: %s", rollout.value.version, type(step).__name__, e)
        return _RECHECK
