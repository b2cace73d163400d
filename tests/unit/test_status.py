"""The one error → gRPC status table (proto/status.py, docs/design.md §6) and its abort helper, which
the Admin, Generation (router) and Worker services all end their failed calls with."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import grpc
import pytest

from epochserve.errors import (
    CapacityError,
    ConfigError,
    DeadlineExceededError,
    EpochConflictError,
    InvalidRequestError,
    LeaseLostError,
    NotLeaderError,
    PortInUseError,
    RequestAbortedError,
    RolloutBusyError,
    RolloutExistsError,
    RolloutNotFoundError,
    RuntimeGuardError,
    SchemaError,
    StoreRequestError,
    StoreUnavailableError,
    UnavailableError,
    VersionMismatchError,
)
from epochserve.proto.status import (
    REASON_KEY,
    RETRY_PUSHBACK_KEY,
    ROLLOUT_BUSY,
    Failure,
    abort,
    abort_with,
    failure_of,
    status_of,
    trailing_metadata_of,
)

Code = grpc.StatusCode
REPO = Path(__file__).resolve().parents[2]
BUSY = ((REASON_KEY, ROLLOUT_BUSY),)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        # request errors (Generation, Worker)
        (InvalidRequestError("temperature", "must be >= 0"), Code.INVALID_ARGUMENT),
        (CapacityError("the queue is full"), Code.RESOURCE_EXHAUSTED),
        (VersionMismatchError("pinned to v3; this worker serves v2"), Code.FAILED_PRECONDITION),
        (RuntimeGuardError("r-1", "non-finite logits"), Code.INTERNAL),
        (ConfigError("bad head split"), Code.FAILED_PRECONDITION),
        (RequestAbortedError("request r-1: aborted"), Code.ABORTED),
        (UnavailableError("request r-1: no worker serves v2"), Code.UNAVAILABLE),
        (DeadlineExceededError("request r-1: deadline"), Code.DEADLINE_EXCEEDED),
        (PortInUseError(8000), Code.UNAVAILABLE),  # any other epochserve error
        # control-plane errors (Admin)
        (RolloutExistsError("a rollout of v1 already exists"), Code.ALREADY_EXISTS),
        (EpochConflictError("v1 is not above the committed epoch v2"), Code.FAILED_PRECONDITION),
        (RolloutBusyError("rollout v1 is in flight"), Code.FAILED_PRECONDITION),
        (RolloutNotFoundError("no rollout of v1"), Code.NOT_FOUND),
        (NotLeaderError("this coordinator does not lead"), Code.UNAVAILABLE),
        (StoreUnavailableError("etcd is down"), Code.UNAVAILABLE),
        (LeaseLostError("lease 7 expired"), Code.UNAVAILABLE),
    ],
)
def test_each_error_maps_to_its_documented_status_with_its_message(error, code):
    assert status_of(error) == code
    failure = failure_of(error, request_id="r-1")
    assert (failure.code, failure.details) == (code, str(error))


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (KeyError("bug"), "KeyError"),
        (SchemaError("/epochserve/c/epoch", "bad JSON"), "SchemaError"),  # a control-plane bug
        (StoreRequestError("etcd refused the request"), "StoreRequestError"),
    ],
)
def test_a_bug_is_internal_and_its_details_hide_its_message(error, name):
    assert status_of(error) == Code.INTERNAL
    assert failure_of(error) == Failure(Code.INTERNAL, f"internal error: {name}")
    # on a request's call the details name the request and the exception
    assert failure_of(error, request_id="r-1").details == f"request r-1: internal error: {error!r}"


def test_only_a_conflict_that_can_pass_later_is_marked_busy():
    assert trailing_metadata_of(RolloutBusyError("rollout v1 is in flight")) == BUSY
    assert failure_of(RolloutBusyError("v2: the rollout kept changing")).trailing_metadata == BUSY
    assert trailing_metadata_of(EpochConflictError("v1 is not above the committed epoch v2")) == ()


def test_a_full_queue_carries_its_retry_hint_in_milliseconds():
    full = CapacityError("the queue is full")
    assert trailing_metadata_of(full) == ()
    full.retry_after_seconds = 1.25  # type: ignore[attr-defined]
    assert failure_of(full).trailing_metadata == ((RETRY_PUSHBACK_KEY, "1250"),)


def _answered(code: grpc.StatusCode, details: str, *trailers: tuple[str, str]) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details)


def test_another_servers_status_passes_through_with_its_reason_only():
    forwarded = _answered(Code.FAILED_PRECONDITION, "rollout v1 is in flight", *BUSY, ("other", "x"))
    assert failure_of(forwarded) == Failure(Code.FAILED_PRECONDITION, "rollout v1 is in flight", BUSY)
    from_worker = _answered(Code.INVALID_ARGUMENT, "n: 0")
    assert failure_of(from_worker, request_id="r-1").details == "request r-1: n: 0"
    named = _answered(Code.INTERNAL, "request r-1: non-finite logits")
    assert failure_of(named, request_id="r-1").details == "request r-1: non-finite logits"


class AbortingContext:
    """The part of a grpc.aio.ServicerContext that abort uses; it raises as gRPC's does."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]] | None = None

    async def abort(self, code, details="", trailing_metadata=()):
        self.aborted = (code, details, trailing_metadata)
        raise grpc.aio.AbortError()


def test_abort_with_ends_the_call_with_the_errors_status_and_metadata():
    context = AbortingContext()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(abort_with(context, RolloutBusyError("rollout v1 is in flight"), call="StartRollout"))
    assert context.aborted == (Code.FAILED_PRECONDITION, "rollout v1 is in flight", BUSY)
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(abort(context, Failure(Code.UNAUTHENTICATED, "missing or invalid bearer token")))
    assert context.aborted == (Code.UNAUTHENTICATED, "missing or invalid bearer token", ())


def test_no_server_aborts_a_call_but_through_the_shared_helper():
    calls = re.compile(r"context\.abort\(")
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("epochserve", "proto", "controlplane", "worker", "router", "operators", "app")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != REPO / "proto" / "status.py" and calls.search(path.read_text())
    ]
    assert offenders == []
