"""PolicyRollout logic, independent of kopf and of how the Admin API is reached.

`drive_rollout` makes sure the Admin API runs the requested version and mirrors the rollout into
the PolicyRollout's status until it ends; `finalize_rollout` decides, when the PolicyRollout is
deleted, whether the rollout must be aborted. Both are safe to rerun at any point (operator
restart, broken stream): they read the rollout's state from the Admin API before acting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Protocol

from epochserve.controlplane.store.records import RolloutPhase
from epochserve.errors import RolloutBusyError, RolloutExistsError, RolloutNotFoundError
from epochserve.operators.conditions import utc_now
from epochserve.operators.rollouts.admin import (
    AdminUnavailableError,
    RolloutAdmin,
    RolloutCommittedError,
    RolloutRejectedError,
    RolloutSnapshot,
)
from epochserve.operators.rollouts.request import RolloutRequest
from epochserve.operators.rollouts.status import (
    FINAL_PHASES,
    PHASE_NAMES,
    Status,
    mirrored_status,
    pending_status,
    rejected_status,
)

logger = logging.getLogger(__name__)
Clock = Callable[[], str]
# Seconds a finalizer waits before it looks for the rollout a second time (see finalize_rollout).
START_RECHECK_DELAY_S = 2.0


class StatusSink(Protocol):
    """Writes a PolicyRollout's status (a merge patch of the status subresource in production)."""

    async def write(self, status: Status) -> None: ...


class StatusMirror:
    """Remembers the last status written and skips writes that would change nothing."""

    def __init__(self, sink: StatusSink, previous: Mapping[str, Any]) -> None:
        self._sink = sink
        self.last: Status = dict(previous)

    async def publish(self, status: Status) -> None:
        if {**self.last, **status} == self.last:
            return
        await self._sink.write(status)
        self.last = {**self.last, **status}


async def _find(admin: RolloutAdmin, version: int) -> RolloutSnapshot | None:
    try:
        return await admin.get_rollout(version)
    except RolloutNotFoundError:
        return None


async def _start_or_adopt(
    admin: RolloutAdmin, request: RolloutRequest, mirror: StatusMirror, clock: Clock
) -> RolloutSnapshot | None:
    """The rollout record for request.version, starting it if needed; None when rejected.

    An existing record with the same source is adopted (our own start before a restart, or a lost
    race with another client); one with another source belongs to someone else and is not touched.
    Raises RolloutBusyError (after writing a Pending status) while another rollout is in flight.
    """
    generation, version = request.generation, request.version
    snapshot = await _find(admin, version)
    if snapshot is None:
        await mirror.publish(pending_status(mirror.last, generation, f"starting version {version}", clock()))
        try:
            snapshot = await admin.start_rollout(
                version, request.source, request.drain, request.drain_deadline
            )
        except RolloutExistsError:
            snapshot = await admin.get_rollout(version)
        except RolloutBusyError as busy:
            await mirror.publish(pending_status(mirror.last, generation, f"waiting: {busy}", clock()))
            raise
        except RolloutRejectedError as rejected:
            await mirror.publish(rejected_status(mirror.last, generation, str(rejected), clock()))
            return None
    if snapshot.source != request.source:
        message = f"version {version} is already rolled out from {snapshot.source!r}, not {request.source!r}"
        await mirror.publish(rejected_status(mirror.last, generation, message, clock()))
        return None
    return snapshot


async def drive_rollout(
    admin: RolloutAdmin,
    request: RolloutRequest,
    sink: StatusSink,
    previous: Mapping[str, Any],
    clock: Clock = utc_now,
) -> str:
    """Start (or adopt) the rollout and mirror it until DONE or ABORTED; return the final phase.

    A PolicyRollout whose status is already final returns at once without calling the Admin API.
    Raises AdminUnavailableError when the watch ends early (the caller retries, and the retry picks
    the mirror up from the current record) and RolloutBusyError while another rollout blocks it.
    """
    if previous.get("phase") in FINAL_PHASES:
        return str(previous["phase"])
    mirror = StatusMirror(sink, previous)
    snapshot = await _start_or_adopt(admin, request, mirror, clock)
    if snapshot is None:
        return "Rejected"
    await mirror.publish(mirrored_status(mirror.last, request.generation, snapshot, clock()))
    if snapshot.phase.is_terminal:
        return PHASE_NAMES[snapshot.phase]
    async for update in admin.watch_rollout(request.version):
        await mirror.publish(mirrored_status(mirror.last, request.generation, update, clock()))
        if update.phase.is_terminal:
            logger.info("rollout %s/v%d ended %s", request.cluster, request.version, update.phase.value)
            return PHASE_NAMES[update.phase]
    raise AdminUnavailableError(f"WatchRollout for version {request.version} ended before the rollout did")


class FinalizeOutcome(Enum):
    """What deleting a PolicyRollout did to its rollout."""

    ABORTED = "aborted"  # it had not committed: AbortRollout was called
    KEPT_COMMITTED = "kept-committed"  # it had committed: the new version stays
    NOTHING = "nothing"  # never started, already aborted, or not ours


async def finalize_rollout(
    admin: RolloutAdmin,
    request: RolloutRequest,
    previous: Mapping[str, Any],
    recheck_delay_s: float = START_RECHECK_DELAY_S,
) -> FinalizeOutcome:
    """Abort the rollout if it has not committed; a committed one is never undone.

    A rollout this PolicyRollout never owned (status Rejected, or another source) is left alone.
    An AbortRollout that loses the race against the commit reports KEPT_COMMITTED. While the status
    is still Pending (or empty) the daemon may have a StartRollout in flight that lands after the
    first look, so a missing rollout is looked up once more after `recheck_delay_s`; a start that
    lands later than that is not seen. Raises AdminUnavailableError when the Admin API cannot be
    asked, RolloutBusyError when the abort kept losing races (the finalizer then stays and retries).
    """
    phase = previous.get("phase")
    if phase == "Rejected":
        return FinalizeOutcome.NOTHING
    snapshot = await _find(admin, request.version)
    if snapshot is None and phase in (None, "Pending"):
        await asyncio.sleep(recheck_delay_s)
        snapshot = await _find(admin, request.version)
    if snapshot is None or snapshot.source != request.source or snapshot.phase is RolloutPhase.ABORTED:
        return FinalizeOutcome.NOTHING
    if snapshot.phase.is_committed:
        return FinalizeOutcome.KEPT_COMMITTED
    try:
        await admin.abort_rollout(request.version)
    except RolloutCommittedError:
        return FinalizeOutcome.KEPT_COMMITTED
    except RolloutNotFoundError:
        return FinalizeOutcome.NOTHING
    logger.info("aborted rollout %s/v%d: its PolicyRollout was deleted", request.cluster, request.version)
    return FinalizeOutcome.ABORTED
