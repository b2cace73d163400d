"""The exception a failed Generation call stands for, for a front that reaches the router over gRPC
(GrpcBackend, an HTTP front process of its own).

The router's service turned the request path's exception into a status (proto/status.py's table);
this turns the status back into an exception of the type that table maps to it, with the same
message, so that errors.py answers the HTTP request exactly as it answers one the router ran in
process (RouterBackend): the same status, message, `param` and Retry-After.

    INVALID_ARGUMENT "FIELD: message"   InvalidRequestError(FIELD, message): `param` names the field
    INVALID_ARGUMENT, other details     the status itself: a worker's refusal, passed on by the
                                        router with the request id first, as in process
    RESOURCE_EXHAUSTED                  CapacityError, with the grpc-retry-pushback-ms hint
    FAILED_PRECONDITION                 VersionMismatchError
    NOT_FOUND                           RolloutNotFoundError
    ABORTED                             RequestAbortedError
    UNAVAILABLE                         UnavailableError (no worker, the router stopping or gone)
    DEADLINE_EXCEEDED                   DeadlineExceededError
    anything else (INTERNAL, ...)       the status itself, which errors.py passes on unchanged
"""

from __future__ import annotations

import re

import grpc

from epochserve.errors import (
    CapacityError,
    DeadlineExceededError,
    InvalidRequestError,
    RequestAbortedError,
    RolloutNotFoundError,
    UnavailableError,
    VersionMismatchError,
)
from epochserve.proto.status import RETRY_PUSHBACK_KEY

# How InvalidRequestError writes itself ("sampling.temperature: must be ..."): a dotted field name.
_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_.\[\]]*): ")

_BY_CODE: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.FAILED_PRECONDITION: VersionMismatchError,
    grpc.StatusCode.NOT_FOUND: RolloutNotFoundError,
    grpc.StatusCode.ABORTED: RequestAbortedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


class RouterCapacityError(CapacityError):
    """RESOURCE_EXHAUSTED from the router: its message, and the retry hint it sent (None: none)."""

    def __init__(self, message: str, retry_after_seconds: float | None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


def error_of(exc: grpc.aio.AioRpcError) -> Exception:
    """The exception to raise for a Generate call that ended with exc's status (module doc)."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = _FIELD.match(details)
        return exc if field is None else InvalidRequestError(field[1], details[field.end() :])
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return RouterCapacityError(details, _retry_after(exc))
    error_type = _BY_CODE.get(code)
    return exc if error_type is None else error_type(details)


def _retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    for key, value in exc.trailing_metadata() or ():
        if key == RETRY_PUSHBACK_KEY:
            try:
                return int(value) / 1000
            except ValueError:
                return None
    return None
