"""Errors of the control plane. The Admin server maps them to gRPC status in one place (admin/status.py).

Contract style (after Patroni's AbstractDCS): losing a race is not an error — guarded writes return
False — while a store we cannot reach raises `StoreUnavailableError`. Everything here derives from
`epochserve.errors.EpochserveError`.
"""

from __future__ import annotations

from epochserve.errors import EpochserveError


class ControlPlaneError(EpochserveError):
    """Base of the control plane's errors."""


class StoreUnavailableError(ControlPlaneError):
    """etcd could not be reached or did not answer in time. Retry later; nothing was half-applied:
    every write is one etcd request, so it either landed whole or not at all (a timed-out write may
    still have landed whole — callers re-read before acting on the outcome)."""


class StoreRequestError(ControlPlaneError):
    """etcd answered but refused the request (a bug or a misconfigured server, not a lost race)."""


class SchemaError(ControlPlaneError):
    """A stored value is not a record this build understands (bad JSON, wrong kind, unknown schema
    version, missing, unknown or mistyped field). The value is rejected whole, never half-applied."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class LeaseLostError(ControlPlaneError):
    """The lease expired, was revoked, or could not be refreshed within its TTL.
    Whatever was bound to it is gone (or about to be); the holder must stop acting on it."""


class NotLeaderError(ControlPlaneError):
    """A leader-only operation ran on a coordinator that does not (or no longer) lead.

    `leader_address` is the Admin address of the current leader when one is known."""

    def __init__(self, message: str, leader_address: str | None = None) -> None:
        super().__init__(message)
        self.leader_address = leader_address


class RolloutNotFoundError(ControlPlaneError):
    """No rollout record exists for the requested version."""


class RolloutExistsError(ControlPlaneError):
    """A rollout of this version was already started (whatever its phase): versions are used once."""


class EpochConflictError(ControlPlaneError):
    """The request contradicts the epoch's history: a version not above every version tried so far,
    a second rollout while one is in flight, or an abort after the commit."""


class RolloutBusyError(EpochConflictError):
    """A start or abort met a rollout in motion: another rollout is in flight, or the rollout
    records kept changing under the write. Unlike other epoch conflicts, the same request can
    succeed later, so the Admin API marks it retryable (admin/status.py)."""


class DuplicateParticipantError(ControlPlaneError):
    """Another live process holds the registration of this worker or router id."""


class ProtocolError(ControlPlaneError):
    """A participant broke the rollout protocol, e.g. reported serving a version it never loaded.
    This is a bug in the caller; the report is refused and nothing is written."""
