"""TLS material for the Admin and Worker services and the etcd connection: reading PEM files, gRPC
credentials, and the ssl context of the worker's session link."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from epochserve.errors import ConfigError


def read_pem(path: Path) -> bytes:
    """The bytes of a PEM file; ConfigError names the file when it cannot be read or is not PEM."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{path}: not a PEM file")
    return data


def server_credentials(cert_file: Path, key_file: Path) -> grpc.ServerCredentials:
    """Credentials of a TLS server from its certificate chain and private key."""
    return grpc.ssl_server_credentials([(read_pem(key_file), read_pem(cert_file))])


def channel_credentials(ca_file: Path | None) -> grpc.ChannelCredentials:
    """Credentials of a TLS client: trust `ca_file`, or the system's roots when None."""
    return grpc.ssl_channel_credentials(root_certificates=read_pem(ca_file) if ca_file else None)


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """An asyncio server's TLS context from a certificate chain and private key (PEM files)."""
    for path in (cert_file, key_file):
        read_pem(path)  # the same clear errors as the gRPC credentials
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as e:
        raise ConfigError(f"{cert_file} / {key_file}: not a certificate and its key ({e})") from None
    return context
