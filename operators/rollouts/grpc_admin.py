"""RolloutAdmin over the coordinator's Admin gRPC API (proto/v1/admin.proto).

`GrpcRolloutAdmin` wraps one `AdminClient` (controlplane/admin/client.py, which sends the bearer
token): it turns Admin messages into `RolloutSnapshot`/`WorkerProgress` and gRPC status codes into
the errors of rollouts/admin.py's table (`admin_error` is the only place that decides which).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Literal

import grpc

from epochserve.controlplane.admin.client import AdminClient, error_reason
from epochserve.controlplane.admin.convert import DRAIN_FROM_PROTO, DRAIN_TO_PROTO, PHASE_FROM_PROTO
from epochserve.controlplane.store.records import DrainPolicy
from epochserve.errors import EpochserveError, RolloutBusyError, RolloutExistsError, RolloutNotFoundError
from epochserve.operators.rollouts.admin import (
    AdminAuthError,
    AdminError,
    AdminUnavailableError,
    RolloutCommittedError,
    RolloutRejectedError,
    RolloutSnapshot,
    WorkerProgress,
)
from epochserve.proto.status import ROLLOUT_BUSY
from epochserve.proto.v1 import admin_pb2 as pb

# Which Admin call failed: the same status code means different things for each.
AdminCall = Literal["start", "abort", "read"]
ABORT_REASON = "aborted by the operator: its PolicyRollout was deleted"
_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def admin_error(error: grpc.aio.AioRpcError, call: AdminCall) -> EpochserveError:
    """The error for a failed Admin call (see the table in rollouts/admin.py).

    FAILED_PRECONDITION is told apart by the coordinator's `epochserve-reason` trailer: ROLLOUT_BUSY
    (another rollout in flight) may pass later; without it, a start is refused for good and an abort
    came after the commit. Codes with no meaning of their own here (UNAVAILABLE, DEADLINE_EXCEEDED,
    INTERNAL, ...) are AdminUnavailableError: the operator can do nothing but retry.
    """
    code = error.code()
    message = f"{code.name}: {error.details() or 'no details'}"
    if code in _AUTH_CODES:
        return AdminAuthError(message)
    if code is grpc.StatusCode.NOT_FOUND:
        return RolloutNotFoundError(message)
    if code is grpc.StatusCode.ALREADY_EXISTS and call == "start":
        return RolloutExistsError(message)
    if code is grpc.StatusCode.FAILED_PRECONDITION and error_reason(error) == ROLLOUT_BUSY:
        return RolloutBusyError(error.details() or message)
    if code is grpc.StatusCode.FAILED_PRECONDITION and call == "abort":
        return RolloutCommittedError(message)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT) and call == "start":
        return RolloutRejectedError(error.details() or message)
    return AdminUnavailableError(message)


@contextmanager
def _translated(call: AdminCall) -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise admin_error(error, call) from error


def worker_progress(info: pb.WorkerInfo, rollout: pb.Rollout) -> WorkerProgress:
    """One worker's part in `rollout`: Failed, Serving, Staged or Loading by its own record, else
    what the rollout's phase waits of it (Staging, Swapping), or Released once it was aborted."""
    version = rollout.version
    staged = info.staged_version if info.HasField("staged_version") else None
    message = ""
    if info.HasField("failed_version") and info.failed_version == version:
        state, message = "Failed", info.failure_reason
    elif info.serving_version == version:
        state = "Serving"
    elif staged == version:
        state = "Staged"
    elif info.status == pb.WORKER_STATUS_LOADING:
        state = "Loading"
    else:
        waiting = {pb.ROLLOUT_PHASE_STAGING: "Staging", pb.ROLLOUT_PHASE_COMMITTED: "Swapping"}
        state = waiting.get(rollout.phase, "Released")
    return WorkerProgress(info.worker_id, state, staged, info.serving_version, message)


def snapshot_of(rollout: pb.Rollout, workers: Iterable[pb.WorkerInfo] = ()) -> RolloutSnapshot:
    """A RolloutSnapshot of an Admin rollout record and the workers registered beside it.

    Raises AdminError for a phase this build does not know (a newer coordinator)."""
    phase = PHASE_FROM_PROTO.get(rollout.phase)
    if phase is None:
        raise AdminError(f"rollout v{rollout.version} has an unknown phase {rollout.phase}")
    return RolloutSnapshot(
        version=rollout.version,
        phase=phase,
        source=rollout.source,
        drain=DRAIN_FROM_PROTO.get(rollout.drain, DrainPolicy.FINISH),
        workers=tuple(worker_progress(w, rollout) for w in workers),
        message=rollout.reason,
    )


class GrpcRolloutAdmin:
    """RolloutAdmin on one AdminClient; the client (and its channel) belongs to the caller.

    `call_timeout_s` bounds each unary call; `watch_timeout_s` bounds one WatchRollout stream, whose
    end then reads as a broken stream (AdminUnavailableError), and the driver's retry resumes it.
    """

    def __init__(self, client: AdminClient, call_timeout_s: float = 30.0, watch_timeout_s: float = 3600.0):
        self._client = client
        self._call_timeout_s = call_timeout_s
        self._watch_timeout_s = watch_timeout_s

    async def start_rollout(
        self, version: int, source: str, drain: DrainPolicy, drain_deadline: float | None = None
    ) -> RolloutSnapshot:
        """The record as created; it lists no workers (the first watch message does)."""
        request = pb.StartRolloutRequest(
            version=version, source=source, drain=DRAIN_TO_PROTO[drain], drain_deadline_seconds=drain_deadline
        )
        with _translated("start"):
            rollout = await self._client.start_rollout(request, timeout=self._call_timeout_s)
        return snapshot_of(rollout)

    async def get_rollout(self, version: int) -> RolloutSnapshot:
        with _translated("read"):
            status = await self._client.get_rollout(version, timeout=self._call_timeout_s)
        return snapshot_of(status.rollout, status.workers)

    async def watch_rollout(self, version: int) -> AsyncIterator[RolloutSnapshot]:
        """The coordinator sends the current record first, then each change, and ends the stream
        after DONE or ABORTED."""
        with _translated("read"):
            async for status in self._client.watch_rollout(version, timeout=self._watch_timeout_s):
                yield snapshot_of(status.rollout, status.workers)

    async def abort_rollout(self, version: int) -> RolloutSnapshot:
        """Abort with ABORT_REASON as the record's reason; aborting an aborted rollout is a no-op."""
        with _translated("abort"):
            rollout = await self._client.abort_rollout(version, ABORT_REASON, timeout=self._call_timeout_s)
        return snapshot_of(rollout)
