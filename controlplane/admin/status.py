"""The Admin service's error edge: decorators that end a servicer method's call through the one
error → status table and abort helper of proto/status.py (docs/design.md §6).

What an Admin caller sees: INVALID_ARGUMENT for a bad field, ALREADY_EXISTS for a version already
rolled out, FAILED_PRECONDITION for an epoch conflict (with `epochserve-reason: ROLLOUT_BUSY` when
it can pass later), NOT_FOUND for an unknown rollout, UNAVAILABLE while no leader or etcd answers,
and INTERNAL (logged with its traceback) for anything else. A status returned by the leader to a
forwarded call is passed through unchanged, reason included. A missing or wrong token never gets
here: auth.py refuses it with UNAUTHENTICATED first.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from epochserve.proto.status import abort_with

T = TypeVar("T")


def unary_errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Decorate a unary servicer method: end its call with its error's status (abort_with)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except Exception as e:
            await abort_with(context, e, call=method.__name__)

    return wrapper


def stream_errors(method: Callable[..., AsyncIterator[T]]) -> Callable[..., AsyncIterator[T]]:
    """Decorate a server-streaming servicer method: end its call with its error's status (abort_with)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[T]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as e:
            await abort_with(context, e, call=method.__name__)

    return wrapper
