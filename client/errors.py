"""Typed errors of the Generation client: one class per gRPC status a router returns (docs/design.md §6).

Every error keeps the gRPC status (`code`), the server's message (`details`, which names the
request) and the request id the client sent. Catch GenerationError for all of them.
"""

from __future__ import annotations

import grpc

from epochserve.proto.status import RETRY_PUSHBACK_KEY


class GenerationError(Exception):
    """A Generate/Abort/GetPolicy call failed with a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, details: str, request_id: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.request_id = request_id


class InvalidArgumentError(GenerationError):
    """The request breaks a rule (bad token id, empty prompt, too long, bad sampling, n)."""


class ResourceExhaustedError(GenerationError):
    """The router's queue for the version is full. Retry after `retry_after_seconds`."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        request_id: str = "",
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(code, details, request_id)
        self.retry_after_seconds = retry_after_seconds


class UnavailableError(GenerationError):
    """No worker for the version, the worker was lost after tokens were sent, or the router is
    unreachable or stopping. Tokens already received must be discarded (never stitched)."""


class AbortedError(GenerationError):
    """The request was aborted: retired by a drain=abort rollout after tokens were sent, or by an
    Abort call before it started."""


class DeadlineExceededError(GenerationError):
    """The call's deadline passed (waiting for min_policy_version, a worker, or generating)."""


class RequestCancelledError(GenerationError):
    """The call was cancelled."""


class FailedPreconditionError(GenerationError):
    """The server cannot run the request in its current state."""


class InternalError(GenerationError):
    """A runtime guard tripped (non-finite logits, a response mixing versions) or a server bug."""


_BY_CODE: dict[grpc.StatusCode, type[GenerationError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: RequestCancelledError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def error_from_rpc(exc: grpc.RpcError, request_id: str = "") -> GenerationError:
    """The typed error for a failed call (sync or asyncio)."""
    code: grpc.StatusCode = exc.code()
    details: str = exc.details() or ""
    error_type = _BY_CODE.get(code, GenerationError)
    if error_type is ResourceExhaustedError:
        return ResourceExhaustedError(code, details, request_id, _retry_after(exc))
    return error_type(code, details, request_id)


def _retry_after(exc: grpc.RpcError) -> float | None:
    metadata = exc.trailing_metadata() or ()
    for key, value in metadata:
        if key == RETRY_PUSHBACK_KEY:
            try:
                return int(value) / 1000.0
            except ValueError:
                return None
    return None
