"""Error types shared by every part. Each server maps them to gRPC status codes in one place."""


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
