"""The one mapping from errors to gRPC statuses (docs/design.md §6), and the one way every server
edge ends a call with it: `abort_with` (an error) and `abort` (a status already decided), used by
the Admin service (through controlplane/admin/status.py's decorators), the router's Generation
service and the Worker service; the Worker's Session stream sends the same `Failure` as a message.

    InvalidRequestError                       INVALID_ARGUMENT, naming the field
    CapacityError                             RESOURCE_EXHAUSTED (+ grpc-retry-pushback-ms when it
                                              carries a retry hint)
    VersionMismatchError, ConfigError         FAILED_PRECONDITION
    EpochConflictError                        FAILED_PRECONDITION; a RolloutBusyError (may pass once
                                              a rollout ends) + epochserve-reason: ROLLOUT_BUSY
    RolloutExistsError                        ALREADY_EXISTS
    RolloutNotFoundError                      NOT_FOUND
    RequestAbortedError                       ABORTED
    UnavailableError, NotLeaderError,         UNAVAILABLE (retry: no worker now, a leader is being
      StoreUnavailableError, LeaseLostError     elected, etcd is back soon)
    DeadlineExceededError                     DEADLINE_EXCEEDED
    RuntimeGuardError                         INTERNAL, with the request id
    any other EpochserveError                 UNAVAILABLE (the server cannot serve it now)
    any other ControlPlaneError, and          INTERNAL: a bug, logged with its traceback; its details
      anything not an EpochserveError           name the exception, not its message (on a request's
                                                call: the request id and the exception's repr)

A status another server answered with (grpc.aio.AioRpcError: the leader's answer to a call a
follower forwarded, a worker's to the router) passes through unchanged: code, details (prefixed with
the request id when they do not name it) and epochserve-reason. A missing or wrong Admin token never
reaches the table: controlplane/admin/auth.py refuses it with UNAUTHENTICATED first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn

import grpc

from epochserve.errors import (
    CapacityError,
    ConfigError,
    ControlPlaneError,
    DeadlineExceededError,
    EpochConflictError,
    EpochserveError,
    InvalidRequestError,
    LeaseLostError,
    NotLeaderError,
    RequestAbortedError,
    RolloutBusyError,
    RolloutExistsError,
    RolloutNotFoundError,
    RuntimeGuardError,
    StoreUnavailableError,
    UnavailableError,
    VersionMismatchError,
)

log = logging.getLogger(__name__)

Metadata = tuple[tuple[str, str], ...]

# First match wins: a subclass's row must come before its base's.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    # request errors (Generation, Worker)
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (VersionMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (RuntimeGuardError, grpc.StatusCode.INTERNAL),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
    (RequestAbortedError, grpc.StatusCode.ABORTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    # control-plane errors (Admin)
    (RolloutExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (EpochConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (RolloutNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NotLeaderError, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (LeaseLostError, grpc.StatusCode.UNAVAILABLE),
)

# Trailing metadata key of gRPC's retry pushback: how long a client should wait before retrying
# (milliseconds, as a decimal string). gRPC's own retry policy honours it; our client reads it.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
REASON_KEY = "epochserve-reason"  # trailing metadata: why a call failed, where the code is ambiguous
ROLLOUT_BUSY = "ROLLOUT_BUSY"  # REASON_KEY of a FAILED_PRECONDITION that may pass once a rollout ends


@dataclass(frozen=True, slots=True)
class Failure:
    """How a call ends when it fails. Built by `failure_of` (or by a server that decided the status
    itself); consumed by `abort`, or sent as a SessionError on a Worker Session stream."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: Metadata = ()


def _code_in_table(exc: BaseException) -> grpc.StatusCode | None:
    return next((code for error_type, code in _CODES if isinstance(exc, error_type)), None)


def is_bug(exc: BaseException) -> bool:
    """Whether exc is unexpected at a server edge: INTERNAL, logged with its traceback (module
    docstring). A status another server answered with is never one."""
    if isinstance(exc, grpc.aio.AioRpcError) or _code_in_table(exc) is not None:
        return False
    return isinstance(exc, ControlPlaneError) or not isinstance(exc, EpochserveError)


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code a client sees for exc (the table in the module docstring)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code()
    code = _code_in_table(exc)
    if code is not None:
        return code
    return grpc.StatusCode.INTERNAL if is_bug(exc) else grpc.StatusCode.UNAVAILABLE


def trailing_metadata_of(exc: BaseException) -> Metadata:
    """Trailing metadata that goes with exc's status: a retry hint for a CapacityError that has one
    (`retry_after_seconds`), ROLLOUT_BUSY for a RolloutBusyError, the epochserve-reason of a status
    another server answered with; nothing otherwise."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return tuple((k, str(v)) for k, v in exc.trailing_metadata() or () if k == REASON_KEY)
    retry_after = getattr(exc, "retry_after_seconds", None)
    if isinstance(exc, CapacityError) and retry_after is not None:
        return ((RETRY_PUSHBACK_KEY, str(max(0, round(retry_after * 1000)))),)
    if isinstance(exc, RolloutBusyError):
        return ((REASON_KEY, ROLLOUT_BUSY),)
    return ()


def failure_of(exc: BaseException, request_id: str = "") -> Failure:
    """The status a server edge ends a call with for exc. `request_id` is the request the call
    serves (Generate), "" for a call that serves none (Admin); it names the request in the details
    of a passed-through status and of a bug."""
    if isinstance(exc, grpc.aio.AioRpcError):
        details = exc.details() or ""
        if request_id and request_id not in details:
            details = f"request {request_id}: {details}"
    elif not is_bug(exc):
        details = str(exc)
    elif request_id:
        details = f"request {request_id}: internal error: {exc!r}"
    else:
        details = f"internal error: {type(exc).__name__}"
    return Failure(status_of(exc), details, trailing_metadata_of(exc))


async def abort(context: grpc.aio.ServicerContext, failure: Failure) -> NoReturn:
    """End the call with `failure`: the only place a server calls context.abort."""
    await context.abort(failure.code, failure.details, trailing_metadata=failure.trailing_metadata)
    raise AssertionError("unreachable: context.abort raises")


async def abort_with(
    context: grpc.aio.ServicerContext, exc: BaseException, *, request_id: str = "", call: str = ""
) -> NoReturn:
    """End the call with exc's status (`failure_of`); a bug is logged first, with its traceback,
    under the request id or else the name of the `call` that raised it."""
    if is_bug(exc):
        log.error("%s failed", f"request {request_id}" if request_id else call or "call", exc_info=exc)
    await abort(context, failure_of(exc, request_id))
