"""Listening ports: every server the project starts owns its port alone and, when it cannot, fails
with PortInUseError ("port 50111 is in use") instead of sharing it or printing a traceback."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from epochserve.errors import ConfigError, PortInUseError

# gRPC servers set SO_REUSEPORT unless told otherwise: a second process on the same port then
# shares it, and clients are spread over two servers that each claim to be the one named there.
EXCLUSIVE_PORT = ("grpc.so_reuseport", 0)


def bind_grpc(
    server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Listen on host:port (TLS with credentials); returns the bound port. The server must have
    been created with EXCLUSIVE_PORT among its options."""
    if port and _is_taken(host.strip("[]"), port):  # asked first: gRPC's own failure logs a C-core line
        raise PortInUseError(port)
    target = f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(target)
        else:
            bound = server.add_secure_port(target, credentials)
    except RuntimeError as exc:
        raise _bind_error(host, port, str(exc)) from None
    if bound == 0:
        raise _bind_error(host, port, "no address could be bound")
    return bound


@contextmanager
def port_errors(port: int) -> Iterator[None]:
    """Around a bind by the socket module (asyncio's create_server, http.server): a taken port
    becomes PortInUseError."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(port) from None
        raise


def _bind_error(host: str, port: int, detail: str) -> Exception:
    """gRPC says only that it failed to bind; a probe of our own tells a taken port apart."""
    if port and _is_taken(host.strip("[]"), port):
        return PortInUseError(port)
    return ConfigError(f"cannot listen on {host}:{port} ({detail})")


def _is_taken(host: str, port: int) -> bool:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        return False
    with socket.socket(family, kind, proto) as probe:
        # As the servers bind (gRPC and http.server set it too): connections of a process that just
        # died, left in TIME_WAIT for a minute, must not read as "in use"; a listener still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process may still take it later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
