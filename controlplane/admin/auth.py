"""Bearer-token authentication of the Admin service.

Every call must carry the metadata `authorization: Bearer <token>`; anything else is refused with
UNAUTHENTICATED before the servicer runs. The comparison is constant-time (hmac.compare_digest).
Only the gRPC health service is open, so that probes need no secret.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc

from epochserve.errors import ConfigError
from epochserve.proto.status import Failure, abort

TOKEN_ENV = "EPOCHSERVE_ADMIN_TOKEN"
_OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})


def load_token(token_file: Path | None, environ: Mapping[str, str] = os.environ) -> str:
    """The token from `token_file` (surrounding whitespace stripped), else from $EPOCHSERVE_ADMIN_TOKEN.
    ConfigError when neither gives a non-empty token."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"token file {token_file}: cannot read ({e.strerror})") from None
        if not token:
            raise ConfigError(f"token file {token_file} is empty")
        return token
    token = environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no admin token: pass --token-file or set {TOKEN_ENV}")
    return token


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that authenticates a client."""
    return (("authorization", f"Bearer {token}"),)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse every call (except health checks) that lacks the right bearer token."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service = (
            handler_call_details.method.split("/")[1] if handler_call_details.method.count("/") == 2 else ""
        )
        if handler is None or service in _OPEN_SERVICES or self._is_valid(handler_call_details):
            return handler
        return _refusing(handler)

    def _is_valid(self, details: grpc.HandlerCallDetails) -> bool:
        presented = [v for k, v in details.invocation_metadata or () if k == "authorization"]
        if len(presented) != 1:
            return False
        value = presented[0] if isinstance(presented[0], bytes) else str(presented[0]).encode()
        return hmac.compare_digest(value, self._expected)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort(context, Failure(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token"))

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
