"""The rollout state machine as a pure function: (rollout, cluster state, now) → the next step.

docs/design.md §5, per phase:

    STAGING    all READY workers staged v with one agreed checksum  → CommitRollout
               a READY worker failed to stage v, or checksums differ → AbortRollout
               the stage deadline passed                            → AbortRollout
    COMMITTED  all READY workers serve v (none still retiring v-1
               sequences beside it) and all routers acked v        → FinishRollout (DONE)
               a READY worker failed to swap to v, or serves v with
               other weights                                        → FenceMembers at once
               the commit deadline passed                           → FenceMembers (every laggard)
    DONE, ABORTED                                                   → nothing to do

"Live" means registered (the key exists, so its lease lives); LOADING workers are catching up with
the committed epoch and take part in neither phase. Fencing deletes a laggard's registration: its
participant sees that, stops taking work, and re-registers only after loading the committed
version — so DONE keeps its promise that every live worker serves v. A record that cannot be
decoded blocks the phase (we cannot tell what it says) until the deadline.

The function reads no clock and no store, so the tests can walk it through every branch.
"""

from __future__ import annotations

from dataclasses import dataclass

from epochserve.controlplane.store.keyspace import KeyKind
from epochserve.controlplane.store.records import RolloutPhase, RolloutRecord
from epochserve.controlplane.store.state import ClusterState


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to write; evaluate again on the next change or at `until` (unix seconds)."""

    until: float | None


@dataclass(frozen=True, slots=True)
class CommitRollout:
    """STAGING → COMMITTED and epoch = v, with the checksum every worker agreed on."""

    checksum: str | None


@dataclass(frozen=True, slots=True)
class AbortRollout:
    """STAGING → ABORTED; workers drop their staging buffers."""

    reason: str


@dataclass(frozen=True, slots=True)
class FinishRollout:
    """COMMITTED → DONE."""


@dataclass(frozen=True, slots=True)
class FenceMembers:
    """Delete these registrations (workers not serving v, routers not acking v)."""

    worker_ids: tuple[str, ...]
    router_ids: tuple[str, ...]
    reason: str


Step = Wait | CommitRollout | AbortRollout | FinishRollout | FenceMembers


def next_step(rollout: RolloutRecord, state: ClusterState, now: float) -> Step:
    """What the leader does next about `rollout` (see the module docstring)."""
    if rollout.phase is RolloutPhase.STAGING:
        return _staging_step(rollout, state, now)
    if rollout.phase is RolloutPhase.COMMITTED:
        return _committed_step(rollout, state, now)
    return Wait(None)


def _staging_step(rollout: RolloutRecord, state: ClusterState, now: float) -> Step:
    v, deadline = rollout.version, rollout.phase_deadline
    ready = state.ready_workers()
    for w in ready:
        if w.failed_version == v:
            return AbortRollout(f"worker {w.worker_id} failed to stage v{v}: {w.failure_reason}")
    staged = {w.worker_id: w.staged_checksum for w in ready if w.staged_version == v}
    agreed = set(staged.values()) | ({rollout.manifest_checksum} if rollout.manifest_checksum else set())
    if len(agreed) > 1:
        expected = f", expected {rollout.manifest_checksum}" if rollout.manifest_checksum else ""
        return AbortRollout(f"manifest checksum mismatch for v{v}: staged {_listing(staged)}{expected}")
    unreadable = state.invalid_names(KeyKind.WORKER)
    missing = [w.worker_id for w in ready if w.worker_id not in staged]
    if not missing and not unreadable:
        return CommitRollout(agreed.pop() if agreed else None)
    if deadline is not None and now >= deadline:
        if missing:
            return AbortRollout(f"stage timeout: workers {missing} did not stage v{v} in time")
        return AbortRollout(f"stage timeout: worker records {unreadable} stayed unreadable")
    return Wait(deadline)


def _committed_step(rollout: RolloutRecord, state: ClusterState, now: float) -> Step:
    v, checksum, deadline = rollout.version, rollout.manifest_checksum, rollout.phase_deadline
    ready = state.ready_workers()
    broken = [
        w.worker_id
        for w in ready
        if (w.failed_version == v and w.serving_version != v)
        or (w.serving_version == v and not w.serves(v, checksum))
    ]
    if broken:
        return FenceMembers(
            tuple(broken), (), f"workers {broken} failed to swap to v{v} or serve other weights"
        )
    workers = [w.worker_id for w in ready if not w.serves(v, checksum) or w.retiring_version is not None]
    workers += state.invalid_names(KeyKind.WORKER)
    routers = [r.value.router_id for _, r in sorted(state.routers.items()) if r.value.acked_epoch < v]
    routers += state.invalid_names(KeyKind.ROUTER)
    if not workers and not routers:
        return FinishRollout()
    if deadline is not None and now >= deadline:
        return FenceMembers(
            tuple(workers), tuple(routers), f"not serving / not acking v{v} within the commit timeout"
        )
    return Wait(deadline)


def _listing(by_id: dict[str, str | None]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(by_id.items()))
