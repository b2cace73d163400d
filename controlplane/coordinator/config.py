"""CoordinatorConfig: every setting of one `epochctl coordinator` process, validated."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from epochserve.controlplane.store.etcd_config import EtcdConfig, split_host_port
from epochserve.controlplane.store.keyspace import check_name
from epochserve.errors import ConfigError

MIN_TOKEN_LENGTH = 16


def default_coordinator_id() -> str:
    """host-pid: unique among the coordinators of a cluster, and readable in logs."""
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()) or "host"
    return f"{host[:100]}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """Settings of a coordinator; `epochctl coordinator` flags map one to one onto these fields."""

    cluster: str  # cluster name: the etcd prefix /epochserve/<cluster>/
    etcd: EtcdConfig
    token: str = field(repr=False)  # bearer token every Admin call must present
    admin_host: str = "127.0.0.1"  # interface the Admin service binds
    admin_port: int = 7070
    advertise_address: str | None = None  # HOST:PORT peers forward to; default admin_host:admin_port
    tls_cert_file: Path | None = None  # Admin server certificate (chain); set → TLS only
    tls_key_file: Path | None = None
    peer_ca_file: Path | None = None  # CA of the other coordinators' Admin certs; default the own cert
    coordinator_id: str = field(default_factory=default_coordinator_id)
    lease_ttl: int = 10  # seconds: how long a dead leader keeps the lead before a standby takes over
    stage_timeout: float = 600.0  # seconds a rollout may stay in STAGING before it aborts
    commit_timeout: float = 300.0  # seconds in COMMITTED before laggards are fenced

    def __post_init__(self) -> None:
        try:
            check_name("cluster", self.cluster)
            check_name("coordinator id", self.coordinator_id)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if len(self.token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"admin token: use at least {MIN_TOKEN_LENGTH} characters")
        if not 0 < self.admin_port < 65536:
            raise ConfigError(f"admin port {self.admin_port}: must be in 1..65535")
        if self.advertise_address is not None:
            split_host_port(self.advertise_address)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("admin TLS: give both --tls-cert and --tls-key, or neither")
        if self.lease_ttl < 1:
            raise ConfigError("lease TTL: must be at least 1 second")
        if not (self.stage_timeout > 0 and self.commit_timeout > 0):
            raise ConfigError("phase timeouts: must be > 0 seconds")

    @property
    def admin_address(self) -> str:
        """Where the other coordinators and clients reach this Admin service."""
        return self.advertise_address or f"{self.admin_host}:{self.admin_port}"

    @property
    def uses_tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def forwarding_ca_file(self) -> Path | None:
        """The CA that verifies the leader when forwarding (replicas usually share one cert)."""
        return self.peer_ca_file or self.tls_cert_file
