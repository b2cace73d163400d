"""RouterConfig: every setting of one `epochctl router` process, validated on construction.

`epochctl router` flags map one to one onto these fields (app/cli/router_cmd.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from epochserve.channels import ClientTls
from epochserve.controlplane.admin.auth import load_token
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.keyspace import check_name
from epochserve.errors import ConfigError
from epochserve.router.admission import QueueLimits
from epochserve.router.policies import DEFAULT_POLICY, POLICIES

MAX_HTTP_PROCESSES = 64  # a typo (1000) would otherwise fork a process per core and more


@dataclass(frozen=True, slots=True)
class ServerTls:
    """TLS of the Generation server. With `client_ca_file`, clients must present a certificate
    signed by it (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class RouterConfig:
    etcd: EtcdConfig
    cluster: str = "default"  # the etcd prefix /epochserve/<cluster>/
    host: str = "127.0.0.1"  # interface the Generation service binds
    port: int = 50050  # 0: a free port, written to ready_file
    advertise_address: str = ""  # HOST:PORT registered in etcd; default host:port
    router_id: str = ""  # default HOSTNAME:PORT (a restart on the same port takes its place)
    metrics_port: int | None = None  # Prometheus endpoint (0: a free port); None: off
    metrics_host: str = "127.0.0.1"
    policy: str = DEFAULT_POLICY
    queue: QueueLimits = field(default_factory=QueueLimits)
    max_attempts: int = 3  # worker calls one request may start
    max_seqs_per_worker: int = 0  # sequences in flight per worker before requests queue here; 0: no bound
    audit_log: Path | None = None  # JSONL of every completed response
    tls: ServerTls | None = None  # client ↔ router
    worker_tls: ClientTls | None = None  # router → worker, gRPC and session links (workers serve TLS)
    use_session_link: bool = True  # False: gRPC Session even to workers with a session link
    lease_ttl: int = 10  # seconds before a silent router is deregistered
    drain_seconds: float = 30.0  # grace for requests in flight at shutdown
    ready_file: Path | None = None  # JSON {host, port, metrics_port, http_port, router_id, pid} once serving
    # The OpenAI-compatible HTTP front (docs/http.md), on `host`:
    http_port: int | None = None  # 0: a free port, written to ready_file; None: off
    tokenizer: Path | None = None  # model dir of the tokenizer and chat template; None: token ids only
    model_name: str = ""  # the name clients use; default the tokenizer dir's name, else "epochserve"
    api_key_file: Path | None = None  # clients must send `Authorization: Bearer <its contents>`
    http_max_body_bytes: int = 4 * 2**20  # larger request bodies get 413
    # 1: the front runs in this process. N > 1: N processes of their own serve it on the one port
    # (SO_REUSEPORT), each a gRPC client of this router (docs/http.md, "Several HTTP processes").
    http_processes: int = 1
    # The Admin service the HTTP front's POST /update_weights_from_disk starts rollouts through:
    admin_address: str = ""  # HOST:PORT of a coordinator; "": that route answers 503
    admin_token_file: Path | None = None  # its bearer token; else $EPOCHSERVE_ADMIN_TOKEN

    def __post_init__(self) -> None:
        try:
            check_name("cluster", self.cluster)
            if self.router_id:
                check_name("router id", self.router_id)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port {self.port}: must be in 0..65535 (0: pick a free one)")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"metrics port {self.metrics_port}: must be in 0..65535")
        if self.http_port is not None and not 0 <= self.http_port < 65536:
            raise ConfigError(f"HTTP port {self.http_port}: must be in 0..65535")
        if self.tokenizer is not None and not self.tokenizer.is_dir():
            raise ConfigError(f"--tokenizer {self.tokenizer}: not a directory")
        if not 1 <= self.http_processes <= MAX_HTTP_PROCESSES:
            raise ConfigError(f"--http-processes {self.http_processes}: must be in 1..{MAX_HTTP_PROCESSES}")
        if self.http_processes > 1 and self.http_port is None:
            raise ConfigError(f"--http-processes {self.http_processes}: needs --http-port (the front is off)")
        if self.http_max_body_bytes < 1024:
            raise ConfigError(f"HTTP body limit {self.http_max_body_bytes}: must be >= 1024 bytes")
        if self.policy not in POLICIES:
            raise ConfigError(f"policy {self.policy!r}: choose one of {sorted(POLICIES)}")
        if self.max_attempts < 1 or self.max_seqs_per_worker < 0:
            raise ConfigError("max_attempts must be >= 1 and max_seqs_per_worker >= 0")
        if self.lease_ttl < 1 or self.drain_seconds < 0:
            raise ConfigError("lease TTL must be >= 1 s and drain seconds >= 0")

    @property
    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        return self.tokenizer.resolve().name if self.tokenizer is not None else "epochserve"

    def api_key(self) -> str | None:
        """The HTTP front's API key, read from api_key_file (None: no check)."""
        if self.api_key_file is None:
            return None
        try:
            key = self.api_key_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"--api-key-file {self.api_key_file}: {e.strerror}") from None
        if not key:
            raise ConfigError(f"--api-key-file {self.api_key_file}: empty")
        return key

    def admin_token(self) -> str | None:
        """The Admin bearer token, when an Admin address is set (None: no rollouts from HTTP)."""
        if not self.admin_address:
            return None
        try:
            return load_token(self.admin_token_file)
        except ConfigError as e:
            raise ConfigError(
                f"--admin-address needs an admin token (--admin-token-file FILE): {e}"
            ) from None

    def identity(self, bound_port: int) -> tuple[str, str]:
        """(router id, advertised address) once the server is bound to `bound_port`."""
        address = self.advertise_address or f"{self.host}:{bound_port}"
        router_id = self.router_id or _safe_name(f"{socket.gethostname()}:{bound_port}")
        return router_id, address


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._:-" else "-" for c in name).lstrip("._:-")
    return (cleaned or "router")[:128]
