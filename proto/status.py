"""The one mapping from epochserve errors to gRPC status codes (DESIGN.md §6), used at every server edge."""

from __future__ import annotations

import grpc

from epochserve.errors import (
    CapacityError,
    ConfigError,
    EpochserveError,
    InvalidRequestError,
    RequestAbortedError,
    RuntimeGuardError,
    VersionMismatchError,
)

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (VersionMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (RuntimeGuardError, grpc.StatusCode.INTERNAL),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (RequestAbortedError, grpc.StatusCode.ABORTED),
]


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status a client sees for exc; anything unexpected is UNAVAILABLE for epochserve errors
    (the server can't serve it now) and INTERNAL otherwise."""
    for error_type, code in _CODES:
        if isinstance(exc, error_type):
            return code
    if isinstance(exc, EpochserveError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL
