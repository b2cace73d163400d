"""The shape of an error body, by route: each API's clients read errors in their own API's shape.

    /v1/messages...              Anthropic's `{"type": "error", "error": {"type", "message"}}`
    /update_weights_from_disk    SGLang's `{"success": false, "message"}`, beside OpenAI's `error`
    anything else                OpenAI's `{"error": {"message", "type", "param", "code"}}`

The HTTP status is the same on every route (errors.py).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from epochserve.router.httpfront.errors import HttpFailure

ANTHROPIC_PREFIX = "/v1/messages"
SGLANG_ADMIN_PATHS = ("/update_weights_from_disk",)
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                    503: "overloaded_error", 504: "timeout_error"}  # fmt: skip


def is_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/")


def anthropic_error(failure: HttpFailure) -> dict[str, Any]:
    default = "api_error" if failure.status >= 500 else "invalid_request_error"
    kind = _ANTHROPIC_TYPES.get(failure.status, default)
    return {"type": "error", "error": {"type": kind, "message": failure.message}}


def error_body(failure: HttpFailure, path: str) -> dict[str, Any]:
    if is_anthropic(path):
        return anthropic_error(failure)
    if path in SGLANG_ADMIN_PATHS:
        return {"success": False, "message": failure.message, **failure.body()}
    return failure.body()


def failure_response(failure: HttpFailure, path: str, headers: dict[str, str] | None = None) -> JSONResponse:
    all_headers = {**failure.headers, **(headers or {})}
    return JSONResponse(error_body(failure, path), failure.status, headers=all_headers)
