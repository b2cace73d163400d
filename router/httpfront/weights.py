"""POST /update_weights_from_disk (SGLang's route): a weight rollout through the control plane's
Admin service, as `epochctl rollout start --wait` does (docs/design.md §5).

The checkpoint must be a published one (safetensors and the manifest PolicyPublisher.save_checkpoint
writes) at a path every worker can read; its manifest names the version. The call returns when the
rollout is DONE (every worker serves it, every router acknowledged it) or ABORTED (nothing changed),
or 504 at its deadline (the rollout goes on: GET /get_weight_version tells when it is served).
Only a caller holding the router's admin token gets here (guards.AdminTokenCheck).
"""

from __future__ import annotations

import math
import time
from pathlib import PurePosixPath

import grpc
from fastapi.responses import JSONResponse, Response

from epochserve.controlplane.admin.client import AdminClient
from epochserve.errors import InvalidRequestError
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.router.httpfront.errors import HttpError
from epochserve.router.httpfront.front import AdminAccess, Front
from epochserve.router.httpfront.sglang_shapes import UpdateWeightsBody

DEFAULT_TIMEOUT_SECONDS = 600.0
START_TIMEOUT_SECONDS = 30.0
_DRAINS = {
    "finish": pb.DRAIN_POLICY_FINISH,
    "abort": pb.DRAIN_POLICY_ABORT,
    "overlap": pb.DRAIN_POLICY_OVERLAP,
}
# The Admin service's field names → this route's (its refusals name the route's fields).
PARAMS = {"drain_deadline": "drain_deadline", "version": "version", "source": "model_path"}
NO_ADMIN = (
    "this router cannot start rollouts: it was started without the control plane's Admin service "
    "(--admin-address HOST:PORT and an admin token, --admin-token-file or $EPOCHSERVE_ADMIN_TOKEN)"
)


def version_of(front: Front, body: UpdateWeightsBody) -> int:
    if body.version is not None:
        return body.version
    if body.weight_version is not None:
        if not body.weight_version.isdigit():
            raise InvalidRequestError(
                "weight_version", f"must be a policy version (digits), got {body.weight_version!r}"
            )
        return int(body.weight_version)
    if front.backend.version is None:
        raise HttpError(503, "no committed policy version yet: pass version", "unavailable")
    return front.backend.version + 1


def rollout_request(front: Front, body: UpdateWeightsBody) -> pb.StartRolloutRequest:
    if not PurePosixPath(body.model_path).is_absolute():
        raise InvalidRequestError("model_path", "must be an absolute path that every worker can read")
    version = version_of(front, body)
    if not 0 < version < 2**64:
        raise InvalidRequestError("version", f"must be in [1, 2**64), got {version}")
    drain = body.drain or ("abort" if body.abort_all_requests else "overlap")
    deadline = body.drain_deadline
    if deadline is not None and not (math.isfinite(deadline) and deadline >= 0):
        raise InvalidRequestError(
            "drain_deadline", f"must be a finite number of seconds >= 0, got {deadline}"
        )
    return pb.StartRolloutRequest(
        version=version, source=body.model_path, drain=_DRAINS[drain], drain_deadline_seconds=deadline
    )


async def update_weights_from_disk(front: Front, body: UpdateWeightsBody) -> Response:
    if front.admin is None:
        raise HttpError(503, NO_ADMIN, "unavailable")
    await front.backend.refresh()  # the default version is the committed one + 1: read it now
    request = rollout_request(front, body)
    timeout = body.timeout or DEFAULT_TIMEOUT_SECONDS
    try:
        status = await _roll_out(front.admin, request, time.monotonic() + timeout)
    except grpc.aio.AioRpcError as e:
        raise _admin_failure(front.admin, e) from None
    version = request.version
    if status is None:
        message = f"rollout of policy version {version} not DONE within {timeout:g} s (it goes on)"
        raise HttpError(504, message, "deadline_exceeded")
    if status.rollout.phase == pb.ROLLOUT_PHASE_ABORTED:
        reason = status.rollout.reason or "unknown"
        body_out = {"success": False, "message": f"rollout of policy version {version} aborted: {reason}",
                    "weight_version": str(status.committed_epoch)}  # fmt: skip
        return JSONResponse(body_out, 400)
    message = f"policy version {version} is served by every worker"
    return JSONResponse({"success": True, "message": message, "weight_version": str(version)})


async def _roll_out(
    admin_access: AdminAccess, request: pb.StartRolloutRequest, deadline: float
) -> pb.RolloutStatus | None:
    """The rollout's last status (DONE or ABORTED); None when the deadline came first."""
    async with AdminClient(admin_access.address, admin_access.token) as admin:
        await admin.start_rollout(request, min(START_TIMEOUT_SECONDS, _left(deadline)))
        try:
            async for status in admin.watch_rollout(request.version, _left(deadline)):
                if status.rollout.phase in (pb.ROLLOUT_PHASE_DONE, pb.ROLLOUT_PHASE_ABORTED):
                    return status
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
    return None


def _admin_failure(admin_access: AdminAccess, error: grpc.aio.AioRpcError) -> Exception:
    """The Admin service's refusal as HTTP (errors.py: 400 for a version not above the epoch, 409
    for one tried before...); the router's own trouble reaching it is 503."""
    where = f"the Admin service at {admin_access.address}"
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return HttpError(503, f"{where} cannot be reached: {error.details()}", "unavailable")
    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
        return HttpError(503, f"{where} refused this router's admin token", "unavailable")
    return error


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())
