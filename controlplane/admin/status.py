"""The one place where the Admin service turns errors into gRPC status codes (docs/design.md §6).

    InvalidRequestError                       INVALID_ARGUMENT
    RolloutExistsError                        ALREADY_EXISTS
    EpochConflictError                        FAILED_PRECONDITION
    RolloutNotFoundError                      NOT_FOUND
    NotLeaderError, StoreUnavailableError,
    LeaseLostError                          UNAVAILABLE (retry: a leader is being elected / etcd is back)
    anything else                             INTERNAL (logged with its traceback)
A RolloutBusyError (another rollout in flight, or records that kept changing) is a
FAILED_PRECONDITION that can pass later; its status carries the trailing metadata
`epochserve-reason: ROLLOUT_BUSY` so that clients can retry it rather than give up. A status returned
by the leader to a forwarded call is passed through unchanged, reason included. A missing or wrong
token never gets here: auth.py refuses it with UNAUTHENTICATED first.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc

from epochserve.controlplane.errors import (
    EpochConflictError,
    LeaseLostError,
    NotLeaderError,
    RolloutBusyError,
    RolloutExistsError,
    RolloutNotFoundError,
    StoreUnavailableError,
)
from epochserve.errors import InvalidRequestError

log = logging.getLogger(__name__)
T = TypeVar("T")

REASON_KEY = "epochserve-reason"  # trailing metadata: why a call failed, where the code is ambiguous
ROLLOUT_BUSY = "ROLLOUT_BUSY"  # REASON_KEY of a FAILED_PRECONDITION that may pass once a rollout ends

_STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (RolloutExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (EpochConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (RolloutNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NotLeaderError, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (LeaseLostError, grpc.StatusCode.UNAVAILABLE),
)


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and details for an error raised while serving a call."""
    if isinstance(error, grpc.aio.AioRpcError):  # the leader's answer to a forwarded call
        return error.code(), error.details() or ""
    for kind, code in _STATUS_OF:
        if isinstance(error, kind):
            return code, str(error)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}"


def reason_of(error: Exception) -> tuple[tuple[str, str], ...]:
    """The REASON_KEY trailing metadata that goes with `error`'s status (empty when it has none)."""
    if isinstance(error, grpc.aio.AioRpcError):  # keep the leader's reason on a forwarded call
        return tuple((k, str(v)) for k, v in error.trailing_metadata() or () if k == REASON_KEY)
    if isinstance(error, RolloutBusyError):
        return ((REASON_KEY, ROLLOUT_BUSY),)
    return ()


async def _abort(context: grpc.aio.ServicerContext, error: Exception, method: str) -> NoReturn:
    code, details = status_of(error)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=error)
    await context.abort(code, details, trailing_metadata=reason_of(error))
    raise AssertionError("context.abort returned")  # it always raises


def unary_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Decorate a unary servicer method: map its errors through status_of."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except Exception as e:
            await _abort(context, e, method.__name__)

    return wrapper


def stream_errors(method: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    """Decorate a server-streaming servicer method: map its errors through status_of."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as e:
            await _abort(context, e, method.__name__)

    return wrapper
