"""RolloutWriter: every write the leading coordinator makes, each one etcd transaction.

Every transaction carries two kinds of guard: "I still lead" (the leader key exists with the
creation revision this coordinator won it at) and "what I decided on has not changed" (the
modification revision of each record read; for a commit or DONE, of every worker and router
key). So a coordinator that lost the lead — paused past its TTL, partitioned — lands nothing,
and two decisions made on the same state cannot both land.
A failed guard returns False after checking which guard failed: NotLeaderError when the lead is
gone (the caller steps down), False when another write won the race (the caller re-reads).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from epochserve.controlplane.coordinator.decide import (
    AbortRollout,
    CommitRollout,
    FenceMembers,
    FinishRollout,
    Step,
)
from epochserve.controlplane.coordinator.requests import StartRequest, check_startable
from epochserve.controlplane.store import codec
from epochserve.controlplane.store.client import EtcdStore, delete_op, modified_at, put_op, unchanged_since
from epochserve.controlplane.store.election import Leadership
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.records import EpochRecord, RolloutPhase, RolloutRecord
from epochserve.controlplane.store.state import ClusterState, Stored, read_state
from epochserve.errors import (
    EpochConflictError,
    NotLeaderError,
    RolloutBusyError,
    RolloutNotFoundError,
)

log = logging.getLogger(__name__)
_MAX_ATTEMPTS = 5  # re-reads after lost races before a request gives up


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Default phase timeouts in seconds (a StartRollout request may override them)."""

    stage: float
    commit: float

    def __post_init__(self) -> None:
        if not (self.stage > 0 and self.commit > 0):
            raise ValueError("phase timeouts must be > 0 seconds")


class RolloutWriter:
    """Guarded writes of one coordinator (see module docstring)."""

    def __init__(
        self,
        store: EtcdStore,
        keyspace: Keyspace,
        coordinator_id: str,
        timeouts: Timeouts,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._keys = keyspace
        self._me = coordinator_id
        self._timeouts = timeouts
        self._clock = clock

    async def start(self, leadership: Leadership, request: StartRequest) -> RolloutRecord:
        """Create `rollouts/<v>` in STAGING. Raises RolloutExistsError / EpochConflictError (see
        check_startable; RolloutBusyError when the rollouts kept changing), NotLeaderError,
        StoreUnavailableError."""
        for _ in range(_MAX_ATTEMPTS):
            state = await self._read_as_leader(leadership)
            check_startable(state, request)
            commit_timeout = request.commit_timeout or self._timeouts.commit
            request.check_drain_deadline(commit_timeout)
            now = self._clock()
            record = RolloutRecord(
                version=request.version,
                source=request.source,
                drain=request.drain,
                phase=RolloutPhase.STAGING,
                created_at=now,
                updated_at=now,
                updated_by=self._me,
                manifest_checksum=request.manifest_checksum,
                phase_deadline=now + (request.stage_timeout or self._timeouts.stage),
                commit_timeout=commit_timeout,
                drain_deadline=request.drain_deadline,
            )
            guards = [
                leadership.guard(),
                unchanged_since(self._keys.rollouts_prefix(), state.revision),
                modified_at(self._keys.epoch(), state.epoch_mod_revision),
            ]
            if await self._store.txn(
                guards, [put_op(self._keys.rollout(record.version), codec.encode(record))]
            ):
                log.info(
                    "rollout v%d: STAGING from %s (drain=%s)", record.version, record.source, record.drain
                )
                return record
        raise RolloutBusyError(f"v{request.version}: the rollouts kept changing; try again")

    async def abort(self, leadership: Leadership, version: int, reason: str) -> RolloutRecord:
        """Abort a STAGING rollout (AbortRollout). Aborting an ABORTED one returns it unchanged.
        Raises RolloutNotFoundError, EpochConflictError once committed, RolloutBusyError when the
        record kept changing under the abort, NotLeaderError."""
        for _ in range(_MAX_ATTEMPTS):
            state = await self._read_as_leader(leadership)
            stored = state.rollouts.get(version)
            if stored is None:
                raise RolloutNotFoundError(f"no rollout of v{version}")
            if stored.value.phase is RolloutPhase.ABORTED:
                return stored.value
            if stored.value.phase is not RolloutPhase.STAGING:
                raise EpochConflictError(
                    f"v{version} is {stored.value.phase}: a rollout can be aborted only before its commit"
                )
            if await self.apply(leadership, stored, state, AbortRollout(reason)):
                return (await read_state(self._store, self._keys)).rollouts[version].value
        raise RolloutBusyError(f"v{version}: the rollout kept changing; try again")

    async def apply(
        self, leadership: Leadership, rollout: Stored[RolloutRecord], state: ClusterState, step: Step
    ) -> bool:
        """Write one step decided on `state`. True when it landed; False when the state changed
        under it (re-read and decide again); NotLeaderError when the lead is gone."""
        guards = [
            leadership.guard(),
            modified_at(self._keys.rollout(rollout.value.version), rollout.mod_revision),
        ]
        record, ops = self._plan(rollout.value, state, step, guards)
        ops.insert(0, put_op(self._keys.rollout(record.version), codec.encode(record)))
        if await self._store.txn(guards, ops):
            log.info(
                "rollout v%d: %s%s",
                record.version,
                record.phase,
                f" ({record.reason})" if record.reason else "",
            )
            return True
        await self._read_as_leader(leadership)
        return False

    def _plan(
        self, rollout: RolloutRecord, state: ClusterState, step: Step, guards: list[Any]
    ) -> tuple[RolloutRecord, list[Any]]:
        """The new rollout record and the other operations of `step` (guards extended in place)."""
        now, v = self._clock(), rollout.version
        if isinstance(step, CommitRollout | FinishRollout):
            # Decided on exactly these registrations: a worker or router that registered or
            # reported after `state` makes the write fail, and the step is decided again.
            guards.append(unchanged_since(self._keys.workers_prefix(), state.revision))
            guards.append(unchanged_since(self._keys.routers_prefix(), state.revision))
        if isinstance(step, CommitRollout):
            guards.append(modified_at(self._keys.epoch(), state.epoch_mod_revision))
            committed = rollout.moved_to(
                RolloutPhase.COMMITTED, now=now, by=self._me, deadline=now + rollout.commit_timeout
            )
            epoch = EpochRecord(version=v, committed_at=now, committed_by=self._me)
            return replace(committed, manifest_checksum=step.checksum), [
                put_op(self._keys.epoch(), codec.encode(epoch))
            ]
        if isinstance(step, AbortRollout):
            return rollout.moved_to(
                RolloutPhase.ABORTED, now=now, by=self._me, deadline=None, reason=step.reason
            ), []
        if isinstance(step, FinishRollout):
            return rollout.moved_to(RolloutPhase.DONE, now=now, by=self._me, deadline=None), []
        assert isinstance(step, FenceMembers), step
        ops = []
        for kind, ids, stored_of in (
            ("worker", step.worker_ids, state.workers),
            ("router", step.router_ids, state.routers),
        ):
            for name in ids:
                key = self._keys.worker(name) if kind == "worker" else self._keys.router(name)
                if name in stored_of:  # unreadable records are deleted unguarded
                    guards.append(modified_at(key, stored_of[name].mod_revision))
                ops.append(delete_op(key))
        fenced = replace(
            rollout,
            updated_at=now,
            updated_by=self._me,
            reason=step.reason,
            fenced_workers=rollout.fenced_workers + step.worker_ids,
            fenced_routers=rollout.fenced_routers + step.router_ids,
        )
        return fenced, ops

    async def _read_as_leader(self, leadership: Leadership) -> ClusterState:
        state = await read_state(self._store, self._keys)
        if not leadership.holds_in(state):
            leader = state.leader
            raise NotLeaderError(
                "this coordinator no longer leads", leader.value.admin_address if leader else None
            )
        return state
