"""The router's errors. Each subclasses a shared type of epochserve.errors, so that the one mapping
in epochserve.proto.status turns it into the status docs/design.md §6 names; every message names the
request id, so that a client can tell which request of many failed and why.
"""

from __future__ import annotations

from epochserve.errors import (
    CapacityError,
    DeadlineExceededError,
    RequestAbortedError,
    UnavailableError,
)


class QueueFullError(CapacityError):
    """A version's queue of waiting requests is full (RESOURCE_EXHAUSTED). `retry_after_seconds`
    travels as trailing metadata (grpc-retry-pushback-ms) and in the message."""

    def __init__(self, request_id: str, version: int, limit: int, retry_after_seconds: float) -> None:
        super().__init__(
            f"request {request_id}: the queue of policy version {version} is full ({limit} waiting); "
            f"retry after {retry_after_seconds:g} s"
        )
        self.request_id = request_id
        self.retry_after_seconds = retry_after_seconds


class NoWorkerError(UnavailableError):
    """No worker served the pinned version (or the version was not committed) within the router's
    longest wait (UNAVAILABLE)."""


class WorkerLostError(UnavailableError):
    """The worker running a request was lost after tokens had reached the client (UNAVAILABLE):
    the router never stitches two workers' outputs, so the request ends here."""


class RetryBudgetError(UnavailableError):
    """A request failed on `max_attempts` workers without sending anything (UNAVAILABLE)."""


class RolloutRetiredError(RequestAbortedError):
    """A drain=abort rollout retired the request after tokens had reached the client (ABORTED)."""


class WaitDeadlineError(DeadlineExceededError):
    """The caller's deadline ran out while the request waited for its version or a worker."""


class RouterShuttingDownError(UnavailableError):
    """The router is stopping and takes no new requests (UNAVAILABLE: retry on another router)."""
