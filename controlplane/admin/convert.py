"""Conversions between the store's records and the Admin protos (proto/v1/admin.proto)."""

from __future__ import annotations

from epochserve.controlplane.coordinator.requests import StartRequest
from epochserve.controlplane.store.records import (
    DrainPolicy,
    DrainReport,
    RolloutPhase,
    RolloutRecord,
    RouterRecord,
    WorkerRecord,
    WorkerStatus,
)
from epochserve.controlplane.store.state import ClusterState
from epochserve.errors import InvalidRequestError, RolloutNotFoundError
from epochserve.proto.v1 import admin_pb2 as pb

PHASE_TO_PROTO = {
    RolloutPhase.STAGING: pb.ROLLOUT_PHASE_STAGING,
    RolloutPhase.COMMITTED: pb.ROLLOUT_PHASE_COMMITTED,
    RolloutPhase.DONE: pb.ROLLOUT_PHASE_DONE,
    RolloutPhase.ABORTED: pb.ROLLOUT_PHASE_ABORTED,
}
PHASE_FROM_PROTO = {v: k for k, v in PHASE_TO_PROTO.items()}
DRAIN_TO_PROTO = {
    DrainPolicy.FINISH: pb.DRAIN_POLICY_FINISH,
    DrainPolicy.ABORT: pb.DRAIN_POLICY_ABORT,
    DrainPolicy.OVERLAP: pb.DRAIN_POLICY_OVERLAP,
}
DRAIN_FROM_PROTO = {v: k for k, v in DRAIN_TO_PROTO.items()}
_STATUS_TO_PROTO = {
    WorkerStatus.LOADING: pb.WORKER_STATUS_LOADING,
    WorkerStatus.READY: pb.WORKER_STATUS_READY,
}


def start_request(request: pb.StartRolloutRequest) -> StartRequest:
    """Validate a StartRolloutRequest; InvalidRequestError names the bad field."""
    if request.drain not in DRAIN_FROM_PROTO:
        raise InvalidRequestError(
            "drain", "choose DRAIN_POLICY_FINISH, DRAIN_POLICY_ABORT or DRAIN_POLICY_OVERLAP"
        )
    return StartRequest(
        version=request.version,
        source=request.source,
        drain=DRAIN_FROM_PROTO[request.drain],
        manifest_checksum=request.manifest_checksum if request.HasField("manifest_checksum") else None,
        stage_timeout=request.stage_timeout_seconds if request.HasField("stage_timeout_seconds") else None,
        commit_timeout=request.commit_timeout_seconds if request.HasField("commit_timeout_seconds") else None,
        drain_deadline=request.drain_deadline_seconds if request.HasField("drain_deadline_seconds") else None,
    )


def rollout(record: RolloutRecord) -> pb.Rollout:
    return pb.Rollout(
        version=record.version,
        source=record.source,
        drain=DRAIN_TO_PROTO[record.drain],
        phase=PHASE_TO_PROTO[record.phase],
        manifest_checksum=record.manifest_checksum,
        reason=record.reason,
        created_at=record.created_at,
        updated_at=record.updated_at,
        phase_deadline=record.phase_deadline,
        updated_by=record.updated_by,
        fenced_worker_ids=record.fenced_workers,
        fenced_router_ids=record.fenced_routers,
        commit_timeout_seconds=record.commit_timeout,
        drain_deadline_seconds=record.drain_deadline,
    )


def worker(record: WorkerRecord) -> pb.WorkerInfo:
    return pb.WorkerInfo(
        worker_id=record.worker_id,
        address=record.address,
        tp_size=record.tp_size,
        capacity=record.capacity,
        status=_STATUS_TO_PROTO[record.status],
        serving_version=record.serving_version,
        serving_checksum=record.serving_checksum,
        fingerprint=record.fingerprint,
        staged_version=record.staged_version,
        staged_checksum=record.staged_checksum,
        failed_version=record.failed_version,
        failure_reason=record.failure_reason,
        updated_at=record.updated_at,
        retiring_version=record.retiring_version,
        last_drain=drain_report(record.last_drain) if record.last_drain else None,
    )


def drain_report(report: DrainReport) -> pb.DrainReport:
    return pb.DrainReport(
        version=report.version,
        drain=DRAIN_TO_PROTO[report.drain],
        first_token_seconds=report.first_token_seconds,
        retire_seconds=report.retire_seconds,
        finished_previous=report.finished_previous,
        aborted_previous=report.aborted_previous,
        reason=report.reason,
    )


def router(record: RouterRecord) -> pb.RouterInfo:
    return pb.RouterInfo(
        router_id=record.router_id,
        address=record.address,
        acked_epoch=record.acked_epoch,
        updated_at=record.updated_at,
    )


def rollout_status(state: ClusterState, version: int) -> pb.RolloutStatus:
    """One rollout and everyone's progress on it; RolloutNotFoundError for an unknown version."""
    stored = state.rollouts.get(version)
    if stored is None:
        raise RolloutNotFoundError(f"no rollout of v{version}")
    ready = state.ready_workers()
    routers = [r.value for _, r in sorted(state.routers.items())]
    return pb.RolloutStatus(
        rollout=rollout(stored.value),
        committed_epoch=state.committed_version,
        workers=[worker(w.value) for _, w in sorted(state.workers.items())],
        routers=[router(r) for r in routers],
        num_staged=sum(1 for w in ready if version in (w.staged_version, w.serving_version)),
        num_serving=sum(1 for w in ready if w.serving_version == version),
        num_acked=sum(1 for r in routers if r.acked_epoch >= version),
        num_ready_workers=len(ready),
        revision=state.revision,
    )
