"""The gRPC RolloutAdmin's two translations: Admin status codes into the operator's errors, and
worker records into per-worker progress. The calls themselves run against a real coordinator in
tests/integration/operators."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from epochserve.errors import RolloutBusyError, RolloutExistsError, RolloutNotFoundError
from epochserve.net import free_port
from epochserve.operators.rollouts import admin as errors
from epochserve.operators.rollouts.admin import AdminTarget
from epochserve.operators.rollouts.connect import GrpcConnector, default_connector
from epochserve.operators.rollouts.grpc_admin import admin_error, worker_progress
from epochserve.proto.v1 import admin_pb2 as pb

Code = grpc.StatusCode
BUSY = (("epochserve-reason", "ROLLOUT_BUSY"),)


def _rpc_error(code: grpc.StatusCode, trailers: tuple[tuple[str, str], ...] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), "from the server")


@pytest.mark.parametrize(
    ("code", "trailers", "call", "expected"),
    [
        (Code.UNAVAILABLE, (), "start", errors.AdminUnavailableError),
        (Code.DEADLINE_EXCEEDED, (), "read", errors.AdminUnavailableError),
        (Code.INTERNAL, (), "abort", errors.AdminUnavailableError),
        (Code.UNAUTHENTICATED, (), "read", errors.AdminAuthError),
        (Code.ALREADY_EXISTS, (), "start", RolloutExistsError),
        (Code.FAILED_PRECONDITION, BUSY, "start", RolloutBusyError),
        (Code.FAILED_PRECONDITION, (), "start", errors.RolloutRejectedError),
        (Code.INVALID_ARGUMENT, (), "start", errors.RolloutRejectedError),
        (Code.NOT_FOUND, (), "read", RolloutNotFoundError),
        (Code.NOT_FOUND, (), "abort", RolloutNotFoundError),
        (Code.FAILED_PRECONDITION, (), "abort", errors.RolloutCommittedError),
        (Code.FAILED_PRECONDITION, BUSY, "abort", RolloutBusyError),
    ],
)
def test_status_codes_map_to_the_error_table(code, trailers, call, expected):
    error = admin_error(_rpc_error(code, trailers), call)
    assert type(error) is expected
    assert "from the server" in str(error)


def _rollout(phase: int) -> pb.Rollout:
    return pb.Rollout(version=3, source="/models/v3", drain=pb.DRAIN_POLICY_FINISH, phase=phase)


@pytest.mark.parametrize(
    ("fields", "phase", "state"),
    [
        ({"failed_version": 3, "failure_reason": "checksum mismatch"}, pb.ROLLOUT_PHASE_ABORTED, "Failed"),
        ({"serving_version": 3}, pb.ROLLOUT_PHASE_DONE, "Serving"),
        ({"staged_version": 3}, pb.ROLLOUT_PHASE_COMMITTED, "Staged"),
        ({"status": pb.WORKER_STATUS_LOADING}, pb.ROLLOUT_PHASE_STAGING, "Loading"),
        ({}, pb.ROLLOUT_PHASE_STAGING, "Staging"),
        ({}, pb.ROLLOUT_PHASE_COMMITTED, "Swapping"),
        ({"staged_version": 2}, pb.ROLLOUT_PHASE_ABORTED, "Released"),
    ],
)
def test_worker_progress_names_what_the_worker_does_for_the_rollout(fields, phase, state):
    info = pb.WorkerInfo(worker_id="w-0", status=pb.WORKER_STATUS_READY, serving_version=2)
    info.MergeFrom(pb.WorkerInfo(**fields))
    progress = worker_progress(info, _rollout(phase))
    assert progress.state == state
    assert progress.message == ("checksum mismatch" if state == "Failed" else "")
    assert progress.serving_version == fields.get("serving_version", 2)
    assert progress.staged_version == fields.get("staged_version")


def test_default_connector_speaks_grpc_and_an_unreachable_admin_is_retryable():
    async def scenario() -> None:
        target = AdminTarget(f"127.0.0.1:{free_port()}", "token")
        async with default_connector().connect(target) as admin:
            await admin.get_rollout(2)

    assert isinstance(default_connector(), GrpcConnector)
    with pytest.raises(errors.AdminUnavailableError, match="UNAVAILABLE"):
        asyncio.run(scenario())
