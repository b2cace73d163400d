"""Error types shared by every part: one class per concept, declared here and nowhere else.

Every server maps them to gRPC statuses in one place (proto/status.py, docs/design.md §6). The
request errors come first; the control plane's (etcd, coordinator, Admin) follow, under
ControlPlaneError. Their contract style (after Patroni's AbstractDCS): losing a race is not an
error — guarded writes return False — while a store we cannot reach raises StoreUnavailableError.
"""


class EpochserveError(Exception):
    """Base of every error epochserve raises on purpose."""


class InvalidRequestError(EpochserveError):
    """A client sent something we refuse (maps to INVALID_ARGUMENT). `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CapacityError(EpochserveError):
    """A bounded resource is full (queue, KV blocks); maps to RESOURCE_EXHAUSTED."""


class RuntimeGuardError(EpochserveError):
    """A runtime guard tripped for one request (non-finite logits, token outside the support).

    Maps to INTERNAL with the request id; the request gets no tokens from the failing step.
    """

    def __init__(self, request_id: str, message: str) -> None:
        super().__init__(f"request {request_id}: {message}")
        self.request_id = request_id


class ConfigError(EpochserveError):
    """A process was started with settings it cannot run with (bad model dir, bad head split).
    `epochctl` prints the message as one line and exits with 2, as for argparse's own errors."""


class PortInUseError(EpochserveError):
    """A server's port is taken by another process; the server refuses to share it."""

    def __init__(self, port: int) -> None:
        super().__init__(f"port {port} is in use")
        self.port = port


class VersionMismatchError(EpochserveError):
    """A request pinned to a policy version this worker does not serve (FAILED_PRECONDITION)."""


class RequestAbortedError(EpochserveError):
    """A request was aborted before it started (maps to ABORTED)."""


class UnavailableError(EpochserveError):
    """Nothing can serve the request now (no worker for its version, a worker lost after tokens
    were sent); maps to UNAVAILABLE. The message names the request id."""


class DeadlineExceededError(EpochserveError):
    """The caller's deadline ran out while the request waited (maps to DEADLINE_EXCEEDED)."""


class ControlPlaneError(EpochserveError):
    """Base of the control plane's errors. One without a status of its own (a bad stored record,
    a refused etcd request, a broken protocol) is a bug at a server edge: INTERNAL."""


class StoreUnavailableError(ControlPlaneError):
    """etcd could not be reached or did not answer in time. Retry later; nothing was half-applied:
    every write is one etcd request, so it either landed whole or not at all (a timed-out write may
    still have landed whole — callers re-read before acting on the outcome). Maps to UNAVAILABLE."""


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
    Whatever was bound to it is gone (or about to be); the holder must stop acting on it.
    Maps to UNAVAILABLE."""


class NotLeaderError(ControlPlaneError):
    """A leader-only operation ran on a coordinator that does not (or no longer) lead.

    `leader_address` is the Admin address of the current leader when one is known. Maps to
    UNAVAILABLE (a leader is being elected; retry)."""

    def __init__(self, message: str, leader_address: str | None = None) -> None:
        super().__init__(message)
        self.leader_address = leader_address


class RolloutNotFoundError(ControlPlaneError):
    """No rollout record exists for the requested version (maps to NOT_FOUND)."""


class RolloutExistsError(ControlPlaneError):
    """A rollout of this version was already started (whatever its phase): versions are used once.
    Maps to ALREADY_EXISTS."""


class EpochConflictError(ControlPlaneError):
    """The request contradicts the epoch's history: a version not above every version tried so far,
    a second rollout while one is in flight, or an abort after the commit (FAILED_PRECONDITION)."""


class RolloutBusyError(EpochConflictError):
    """A start or abort met a rollout in motion: another rollout is in flight, or the rollout
    records kept changing under the write. Unlike other epoch conflicts, the same request can
    succeed later, so its FAILED_PRECONDITION carries `epochserve-reason: ROLLOUT_BUSY`
    (proto/status.py) and clients retry it."""


class DuplicateParticipantError(ControlPlaneError):
    """Another live process holds the registration of this worker or router id."""


class ProtocolError(ControlPlaneError):
    """A participant broke the rollout protocol, e.g. reported serving a version it never loaded.
    This is a bug in the caller; the report is refused and nothing is written."""
