"""Errors of the HTTP front in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
with the HTTP status of the gRPC status the same error gets on the gRPC front.

The status comes from the one table in proto/status.py (docs/design.md §6), then Google's standard
gRPC → HTTP mapping; so a rule is never mapped twice. `param` names the HTTP field the client sent
(`temperature`), the message is the gRPC one (`sampling.temperature: must be ...`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from epochserve.errors import InvalidRequestError
from epochserve.proto.status import RETRY_PUSHBACK_KEY, failure_of, is_bug

log = logging.getLogger(__name__)

HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class HttpFailure:
    status: int
    message: str
    code: str
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class HttpError(Exception):
    """A refusal decided by the HTTP front itself (unknown model, bad key, oversized body...)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.failure = HttpFailure(status, message, code, param)


def http_failure(exc: BaseException, params: Mapping[str, str] = {}, request_id: str = "") -> HttpFailure:
    """The failure a request ends with for `exc`. `params` maps the request path's field names
    (InvalidRequestError.field) to this route's; a bug is logged with its traceback."""
    if isinstance(exc, HttpError):
        return exc.failure
    if is_bug(exc):
        log.error("request %s failed", request_id or "(http)", exc_info=exc)
    grpc_failure = failure_of(exc, request_id)
    status = HTTP_STATUS.get(grpc_failure.code, 500)
    param = _param_of(exc, params)
    headers = {}
    if grpc_failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        pushback_ms = dict(grpc_failure.trailing_metadata).get(RETRY_PUSHBACK_KEY, "1000")
        headers["Retry-After"] = str(max(1, math.ceil(int(pushback_ms) / 1000)))
    return HttpFailure(status, grpc_failure.details, grpc_failure.code.name.lower(), param, headers)


def _param_of(exc: BaseException, params: Mapping[str, str]) -> str | None:
    """The HTTP field a refusal names: the router's own (InvalidRequestError.field), or one a worker
    refused (its INVALID_ARGUMENT details start with the field: what only the model knows, such as
    routed experts of a dense model)."""
    if isinstance(exc, InvalidRequestError):
        return params.get(exc.field, exc.field)
    if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        details = exc.details() or ""
        return next((param for name, param in params.items() if f"{name}: " in details), None)
    return None
