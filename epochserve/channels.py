"""gRPC channel and server options shared by the router, its client and the benchmark.

Keepalive: a worker or router that vanishes without closing its connections (host down, network
partition) is noticed by HTTP/2 pings within keepalive time + timeout, and its streams fail with
UNAVAILABLE instead of hanging (docs/design.md §1 I5). A process that dies on the same host is noticed at
once (the kernel resets its sockets). Ping intervals stay above what default gRPC servers (the
workers) accept, so they never answer with GOAWAY "too many pings".
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from epochserve.errors import ConfigError
from epochserve.net import EXCLUSIVE_PORT
from epochserve.tls import channel_credentials, read_pem

MB = 1 << 20

# Router → worker: one long-lived channel per worker. Pings only while calls are open.
WORKER_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    # Reconnect soon after a worker restarts on the same address.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.max_receive_message_length", 64 * MB),
)

# Client → router.
CLIENT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A restarted router is found again within ~1 s (new calls wait for it with wait_for_ready).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 64 * MB),
)

# The router's server: accept the clients' pings above; ping idle clients to drop dead ones.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    EXCLUSIVE_PORT,
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_receive_message_length", 64 * MB),
    ("grpc.max_send_message_length", 64 * MB),
    # Many concurrent streams per client connection (the load tester opens thousands).
    ("grpc.max_concurrent_streams", 100_000),
)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS of a client connection: trust `ca_file` (None: the system roots); present
    `cert_file`/`key_file` when the server requires client certificates (mutual TLS)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None  # override of the name checked in the server certificate

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("client TLS: give both a certificate and its key, or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        if self.cert_file is None:
            return channel_credentials(self.ca_file)
        assert self.key_file is not None  # checked in __post_init__
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca_file) if self.ca_file else None,
            private_key=read_pem(self.key_file),
            certificate_chain=read_pem(self.cert_file),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same trust and client certificate for a plain TLS connection (the session link)."""
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def options(self) -> tuple[tuple[str, str], ...]:
        return () if self.server_name is None else (("grpc.ssl_target_name_override", self.server_name),)


def aio_channel(
    target: str, options: tuple[tuple[str, int], ...], tls: ClientTls | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to target, over TLS when `tls` is given."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, tls.credentials(), options=(*options, *tls.options()))


def sync_channel(
    target: str, options: tuple[tuple[str, int], ...], tls: ClientTls | None = None
) -> grpc.Channel:
    """A blocking channel to target, over TLS when `tls` is given."""
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, tls.credentials(), options=(*options, *tls.options()))
