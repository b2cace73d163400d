"""How to reach etcd: endpoints, TLS files, request timeout."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from epochserve.errors import ConfigError


def split_host_port(endpoint: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' → (host, port); raises ConfigError when malformed."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"endpoint {endpoint!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """Connection settings of an etcd client.

    Several endpoints must be IP addresses (gRPC tries them in order and moves on when one fails);
    to use host names, give one name that resolves to every member.
    """

    endpoints: tuple[str, ...]  # HOST:PORT of the members' client URLs
    ca_file: Path | None = None  # CA bundle that signed etcd's server certificate; set → TLS
    cert_file: Path | None = None  # client certificate, when etcd requires client auth
    key_file: Path | None = None  # its private key
    request_timeout: float = 5.0  # seconds, each unary request (reads, writes, keepalives)

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("etcd endpoints: give at least one HOST:PORT")
        hosts = [split_host_port(e)[0] for e in self.endpoints]
        if len(hosts) > 1 and not all(_is_ip(h) for h in hosts):
            raise ConfigError("etcd endpoints: several endpoints must be IP addresses (or give one DNS name)")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("etcd client certificate: give both the cert and the key file, or neither")
        if self.cert_file is not None and self.ca_file is None:
            raise ConfigError("etcd client certificate: needs TLS, give the CA file too")
        if not self.request_timeout > 0:
            raise ConfigError("etcd request timeout: must be > 0 seconds")

    @classmethod
    def parse(
        cls,
        endpoints: str,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        request_timeout: float = 5.0,
    ) -> EtcdConfig:
        """From a comma-separated endpoint list, as command lines give it."""
        listed = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        return cls(listed, ca_file, cert_file, key_file, request_timeout)

    def target(self) -> str:
        """The gRPC target naming every endpoint."""
        if len(self.endpoints) == 1:
            return self.endpoints[0]
        pairs = [split_host_port(e) for e in self.endpoints]
        family = "ipv6" if ":" in pairs[0][0] else "ipv4"
        wrap = "[{}]:{}" if family == "ipv6" else "{}:{}"
        return f"{family}:" + ",".join(wrap.format(h, p) for h, p in pairs)
