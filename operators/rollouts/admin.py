"""The slice of the coordinator's Admin API that the operator uses, as a typed interface.

The handler logic (driver.py) depends only on `RolloutAdmin`; the gRPC implementation
(grpc_admin.py) maps Admin's messages to `RolloutSnapshot` and its status codes to errors: the shared
control-plane errors of epochserve/errors.py where the concept is the coordinator's own (a rollout
exists, is busy, is not found), and the client-side ones below otherwise:

| Admin status                                    | raised here            | operator does          |
|-------------------------------------------------|------------------------|------------------------|
| UNAVAILABLE, DEADLINE_EXCEEDED, broken stream,  | AdminUnavailableError  | retry (TemporaryError) |
|   any code not listed here                      |                        |                        |
| ALREADY_EXISTS on StartRollout                  | RolloutExistsError     | adopt the rollout      |
| FAILED_PRECONDITION with the trailer            | RolloutBusyError       | retry later            |
|   `epochserve-reason: ROLLOUT_BUSY` (another    |                        |                        |
|   rollout in flight)                            |                        |                        |
| FAILED_PRECONDITION / INVALID_ARGUMENT on       | RolloutRejectedError   | phase Rejected, stop   |
|   StartRollout: version not above the epoch,    |                        |                        |
|   bad source                                    |                        |                        |
| NOT_FOUND on Get/Watch/Abort                    | RolloutNotFoundError   | nothing to mirror      |
| FAILED_PRECONDITION on Abort (no trailer):      | RolloutCommittedError  | keep the rollout       |
|   the rollout committed                         |                        |                        |
| UNAUTHENTICATED, PERMISSION_DENIED              | AdminAuthError         | retry (token may land) |
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from epochserve.controlplane.store.records import DrainPolicy, RolloutPhase
from epochserve.errors import EpochserveError


@dataclass(frozen=True, slots=True)
class WorkerProgress:
    """One worker's part in a rollout, as the coordinator reports it (state is its word for it)."""

    worker_id: str
    state: str
    staged_version: int | None = None
    serving_version: int | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class RolloutSnapshot:
    """A rollout record at one moment; created by the Admin client, consumed by driver/status."""

    version: int
    phase: RolloutPhase
    source: str
    drain: DrainPolicy
    workers: tuple[WorkerProgress, ...] = ()
    message: str = ""


class AdminError(EpochserveError):
    """Base of the operator's own Admin-call errors (the table above; RolloutExistsError,
    RolloutBusyError and RolloutNotFoundError are the shared ones of epochserve/errors.py)."""


class AdminUnavailableError(AdminError):
    """No answer from a leader (coordinator down, election in progress, stream broken): retry."""


class AdminAuthError(AdminError):
    """The Admin API refused the token."""


class RolloutRejectedError(AdminError):
    """StartRollout that can never succeed (version not above the current epoch, bad source)."""


class RolloutCommittedError(AdminError):
    """AbortRollout after the rollout committed (the epoch already moved)."""


class RolloutAdmin(Protocol):
    """Admin calls, with the contracts the driver relies on."""

    async def start_rollout(
        self, version: int, source: str, drain: DrainPolicy, drain_deadline: float | None = None
    ) -> RolloutSnapshot:
        """Create the rollout (STAGING); raises RolloutExistsError/BusyError/RejectedError."""
        ...

    async def get_rollout(self, version: int) -> RolloutSnapshot:
        """The current record; raises RolloutNotFoundError."""
        ...

    def watch_rollout(self, version: int) -> AsyncIterator[RolloutSnapshot]:
        """The current record, then every change; ends after a terminal phase (DONE/ABORTED).

        Ending before a terminal phase, or raising AdminUnavailableError, means the stream broke.
        """
        ...

    async def abort_rollout(self, version: int) -> RolloutSnapshot:
        """Abort an uncommitted rollout; raises RolloutCommittedError/NotFoundError, or
        RolloutBusyError when the record kept changing under the abort (retry)."""
        ...


@dataclass(frozen=True, slots=True)
class AdminTarget:
    """Where a cluster's Admin API listens (host:port) and the bearer token it expects."""

    address: str
    token: str


class AdminConnector(Protocol):
    """Opens an Admin session for a cluster; closing the context releases the channel."""

    def connect(self, target: AdminTarget) -> AbstractAsyncContextManager[RolloutAdmin]: ...
