"""A RolloutAdmin that keeps rollouts in memory and follows the coordinator's contract (docs/design.md
§5): one rollout in flight, versions strictly above the epoch, STAGING -> COMMITTED ->
DONE or ABORTED, abort only before commit, watches that end after a terminal phase. The test plays
the workers and the coordinator through `report_staged`, `commit`, `finish` and `fail`."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from epochserve.controlplane.store.records import DrainPolicy, RolloutPhase
from epochserve.errors import RolloutBusyError, RolloutExistsError, RolloutNotFoundError
from epochserve.operators.rollouts.admin import (
    AdminUnavailableError,
    RolloutCommittedError,
    RolloutRejectedError,
    RolloutSnapshot,
    WorkerProgress,
)


class InMemoryAdmin:
    def __init__(self, worker_ids: tuple[str, ...] = ("w-0", "w-1"), epoch: int = 1) -> None:
        self.worker_ids = worker_ids
        self.epoch = epoch
        self.rollouts: dict[int, RolloutSnapshot] = {}
        self.start_calls: list[int] = []
        self.abort_calls: list[int] = []
        self.drain_deadlines: dict[int, float | None] = {}
        self.stream_broken = False
        self._changed = asyncio.Condition()
        self._revision = 0

    # --- RolloutAdmin -------------------------------------------------------------------------
    async def start_rollout(
        self, version: int, source: str, drain: DrainPolicy, drain_deadline: float | None = None
    ) -> RolloutSnapshot:
        self.start_calls.append(version)
        self.drain_deadlines[version] = drain_deadline
        if version in self.rollouts:
            raise RolloutExistsError(f"version {version} exists")
        if any(not r.phase.is_terminal for r in self.rollouts.values()):
            raise RolloutBusyError("another rollout is in flight")
        if version <= self.epoch:
            raise RolloutRejectedError(f"version {version} is not above the epoch {self.epoch}")
        workers = tuple(WorkerProgress(w, "Staging", serving_version=self.epoch) for w in self.worker_ids)
        snapshot = RolloutSnapshot(version, RolloutPhase.STAGING, source, drain, workers)
        await self._set(snapshot)
        return snapshot

    async def get_rollout(self, version: int) -> RolloutSnapshot:
        if version not in self.rollouts:
            raise RolloutNotFoundError(f"no rollout {version}")
        return self.rollouts[version]

    async def watch_rollout(self, version: int) -> AsyncIterator[RolloutSnapshot]:
        seen = -1
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda seen=seen: self._revision != seen or self.stream_broken)
                if self.stream_broken:
                    raise AdminUnavailableError("stream reset")
                seen = self._revision
                snapshot = await self.get_rollout(version)
            yield snapshot
            if snapshot.phase.is_terminal:
                return

    async def abort_rollout(self, version: int) -> RolloutSnapshot:
        self.abort_calls.append(version)
        snapshot = await self.get_rollout(version)
        if snapshot.phase.is_committed:
            raise RolloutCommittedError(f"version {version} committed")
        return await self._to(version, RolloutPhase.ABORTED, "Aborted", "aborted by request")

    # --- what workers and the coordinator do --------------------------------------------------
    async def report_staged(self, version: int, worker_id: str) -> None:
        snapshot = self.rollouts[version]
        workers = tuple(
            dataclasses.replace(w, state="Staged", staged_version=version) if w.worker_id == worker_id else w
            for w in snapshot.workers
        )
        await self._set(dataclasses.replace(snapshot, workers=workers))

    async def commit(self, version: int) -> None:
        self.epoch = version
        await self._to(version, RolloutPhase.COMMITTED, "Staged", "epoch moved")

    async def finish(self, version: int) -> None:
        await self._to(version, RolloutPhase.DONE, "Serving", "all workers serve the version")

    async def fail(self, version: int, message: str) -> None:
        await self._to(version, RolloutPhase.ABORTED, "Failed", message)

    async def break_streams(self) -> None:
        async with self._changed:
            self.stream_broken = True
            self._changed.notify_all()

    # --- internals ----------------------------------------------------------------------------
    async def _to(self, version: int, phase: RolloutPhase, state: str, message: str) -> RolloutSnapshot:
        snapshot = self.rollouts[version]
        serving = version if phase is RolloutPhase.DONE else None
        workers = tuple(
            dataclasses.replace(w, state=state, serving_version=serving or w.serving_version)
            for w in snapshot.workers
        )
        updated = dataclasses.replace(snapshot, phase=phase, workers=workers, message=message)
        await self._set(updated)
        return updated

    async def _set(self, snapshot: RolloutSnapshot) -> None:
        async with self._changed:
            self.rollouts[snapshot.version] = snapshot
            self._revision += 1
            self._changed.notify_all()
