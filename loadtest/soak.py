"""RolloutCycler: soak mode's rollouts, started through the Admin API while the load runs.

Every `rollout_every_seconds` (measured from one start to the next, or right after the previous
rollout ended when it took longer) it rolls out the next version: one above the committed epoch
and every version any rollout used before (asked with ListRollouts each time, so rollouts by
anybody else are stepped over), from the next source in turn, with the next drain policy in turn
(finish, abort, finish, ...). It follows each rollout with WatchRollout and records when this
process observed COMMITTED and DONE; a DONE goes into the VersionLog for the freshness check.

Failure modes: a refused StartRollout (another rollout in flight, a version taken meanwhile) and
a watch that times out are recorded on the rollout ("failed", "timed_out") and the soak goes on.
UNAVAILABLE is the Admin API's "try again" (a leader being elected, etcd slower than the
coordinator's request timeout): ListRollouts and StartRollout are sent again and a cut watch is
resumed, until the rollout's timeout. A StartRollout that failed that way may still have landed, so
ALREADY_EXISTS on a repeated start adopts the rollout when it has our source.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from epochserve.controlplane.admin.client import AdminClient
from epochserve.errors import EpochserveError
from epochserve.loadtest.config import DrainName, SoakConfig
from epochserve.loadtest.records import ObservedRollout, VersionLog
from epochserve.loadtest.versions import VersionPublisher
from epochserve.proto.v1 import admin_pb2 as pb

logger = logging.getLogger(__name__)
T = TypeVar("T")

CALL_TIMEOUT_SECONDS = 30.0
RETRY_PAUSE_SECONDS = 0.5  # between attempts after UNAVAILABLE
_DRAINS = {
    "finish": pb.DRAIN_POLICY_FINISH,
    "abort": pb.DRAIN_POLICY_ABORT,
    "overlap": pb.DRAIN_POLICY_OVERLAP,
}


class RolloutCycler:
    def __init__(
        self, config: SoakConfig, versions: VersionLog, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.versions = versions
        self.clock = clock
        self.publisher = VersionPublisher(config.publish_dir)
        self.rollouts: list[ObservedRollout] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Roll out versions until `stop` is set; a rollout under way when it is set is followed to
        its end. Returns once no rollout of ours is in flight."""
        config = self.config
        next_at = self.clock() + config.rollout_every_seconds
        # Read (or hash) the sources' manifests now, off the event loop, so that the first rollout
        # starts on time; a bad source fails here, before any rollout.
        await asyncio.to_thread(self.publisher.warm_up, config.sources)
        async with AdminClient(config.admin, config.token, tls=config.tls, ca_file=config.ca_file) as admin:
            while not await _stopped_before(stop, next_at - self.clock()):
                index = len(self.rollouts)
                started = self.clock()
                await self._rollout(
                    admin,
                    config.sources[index % len(config.sources)],
                    config.drains[index % len(config.drains)],
                )
                next_at = max(started + config.rollout_every_seconds, self.clock())

    async def _rollout(self, admin: AdminClient, source: Path, drain: DrainName) -> None:
        deadline = self.clock() + self.config.rollout_timeout_seconds
        version = await self._until_available(deadline, lambda: self._next_version(admin))
        record = ObservedRollout(version, drain, str(source))
        self.rollouts.append(record)
        try:
            path, checksum = await asyncio.to_thread(self.publisher.prepare, version, source)
            record.source = str(path)
            record.started_at = self.clock()
            request = pb.StartRolloutRequest(
                version=version,
                source=str(path),
                drain=_DRAINS[drain],
                manifest_checksum=checksum,
                drain_deadline_seconds=self.config.drain_deadline_seconds,
            )
            await self._start(admin, request, deadline)
            logger.info("soak: rollout of v%d started (drain=%s)", version, drain)
            await self._follow(admin, record, deadline)
        except grpc.aio.AioRpcError as exc:
            record.outcome = "timed_out" if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "failed"
            record.reason = f"{exc.code().name}: {exc.details()}"
            logger.warning("soak: rollout of v%d %s: %s", version, record.outcome, record.reason)
        except (EpochserveError, OSError) as exc:  # the version could not be prepared
            record.outcome, record.reason = "failed", f"preparing {source}: {exc}"
            logger.warning("soak: rollout of v%d failed: %s", version, record.reason)
        record.ended_at = self.clock()

    async def _next_version(self, admin: AdminClient) -> int:
        reply = await admin.list_rollouts(None, CALL_TIMEOUT_SECONDS)
        return max([reply.committed_epoch, *(r.version for r in reply.rollouts)]) + 1

    async def _start(self, admin: AdminClient, request: pb.StartRolloutRequest, deadline: float) -> None:
        """StartRollout, sent again after UNAVAILABLE. An attempt that failed that way may still have
        landed (the coordinator stopped waiting for etcd, which wrote it later): ALREADY_EXISTS for a
        rollout with our source, a directory prepared for this rollout alone, is that attempt's."""
        try:
            await self._until_available(deadline, lambda: admin.start_rollout(request, CALL_TIMEOUT_SECONDS))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            status = await self._until_available(
                deadline, lambda: admin.get_rollout(request.version, CALL_TIMEOUT_SECONDS)
            )
            if status.rollout.source != request.source:
                raise
            logger.info("soak: v%d was started by an attempt that seemed to fail", request.version)

    async def _until_available(self, deadline: float, call: Callable[[], Awaitable[T]]) -> T:
        """`call()`, again after each UNAVAILABLE until `deadline`; any other error is raised."""
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or self.clock() + RETRY_PAUSE_SECONDS > deadline:
                    raise
                logger.info("soak: %s; trying again", exc.details())
            await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def _follow(self, admin: AdminClient, record: ObservedRollout, deadline: float) -> None:
        """Watch until DONE or ABORTED (resuming a watch cut short) or `deadline`."""
        while record.outcome == "running":
            remaining = deadline - self.clock()
            if remaining <= 0:
                record.outcome, record.reason = "timed_out", "no DONE or ABORTED within the rollout timeout"
                return
            try:
                async for status in admin.watch_rollout(record.version, remaining):
                    self._observe(record, status.rollout)
                    record.worker_drains.update(worker_drains(status))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                await asyncio.sleep(RETRY_PAUSE_SECONDS)

    def _observe(self, record: ObservedRollout, rollout: pb.Rollout) -> None:
        now = self.clock()
        if (
            rollout.phase in (pb.ROLLOUT_PHASE_COMMITTED, pb.ROLLOUT_PHASE_DONE)
            and record.committed_at is None
        ):
            record.committed_at = now
        if rollout.phase == pb.ROLLOUT_PHASE_DONE:
            record.done_at, record.outcome = now, "done"
            self.versions.observe_done(record.version, now)
            logger.info("soak: v%d DONE", record.version)
        elif rollout.phase == pb.ROLLOUT_PHASE_ABORTED:
            record.outcome, record.reason = "aborted", rollout.reason
            logger.warning("soak: v%d ABORTED: %s", record.version, rollout.reason)


def worker_drains(status: pb.RolloutStatus) -> dict[str, dict[str, Any]]:
    """Each worker's drain report for the status's version, as plain values."""
    drains = {}
    for worker in status.workers:
        d = worker.last_drain
        if worker.HasField("last_drain") and d.version == status.rollout.version:
            drains[worker.worker_id] = {
                "drain": pb.DrainPolicy.Name(d.drain).removeprefix("DRAIN_POLICY_").lower(),
                "first_token_seconds": d.first_token_seconds if d.HasField("first_token_seconds") else None,
                "retire_seconds": d.retire_seconds if d.HasField("retire_seconds") else None,
                "finished_previous": d.finished_previous,
                "aborted_previous": d.aborted_previous,
                "reason": d.reason,
            }
    return drains


async def _stopped_before(stop: asyncio.Event, delay: float) -> bool:
    """Wait up to `delay` seconds; True as soon as `stop` is set."""
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()
