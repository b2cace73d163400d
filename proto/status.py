"""The one mapping from epochserve errors to gRPC status codes (docs/design.md §6), used at every
server edge."""

from __future__ import annotations

import grpc

from epochserve.errors import (
    CapacityError,
    ConfigError,
    DeadlineExceededError,
    EpochserveError,
    InvalidRequestError,
    RequestAbortedError,
    RuntimeGuardError,
    UnavailableError,
    VersionMismatchError,
)

_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (VersionMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (RuntimeGuardError, grpc.StatusCode.INTERNAL),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (RequestAbortedError, grpc.StatusCode.ABORTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
]

# Trailing metadata key of gRPC's retry pushback: how long a client should wait before retrying
# (milliseconds, as a decimal string). gRPC's own retry policy honours it; our client reads it.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status a client sees for exc; anything unexpected is UNAVAILABLE for epochserve errors
    (the server can't serve it now) and INTERNAL otherwise."""
    for error_type, code in _CODES:
        if isinstance(exc, error_type):
            return code
    if isinstance(exc, EpochserveError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def trailing_metadata_of(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """Trailing metadata that goes with exc's status: a retry hint for a CapacityError that has
    one (`retry_after_seconds`), nothing otherwise."""
    retry_after = getattr(exc, "retry_after_seconds", None)
    if isinstance(exc, CapacityError) and retry_after is not None:
        return ((RETRY_PUSHBACK_KEY, str(max(0, round(retry_after * 1000)))),)
    return ()
