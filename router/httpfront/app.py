"""The HTTP front's ASGI app: OpenAI's, Anthropic's and SGLang's routes, health, metrics, and the
refusals before any route.

    GET  /health                    200 while the router admits requests (a committed version read), else 503
    GET  /metrics                   the router's Prometheus metrics (also on --metrics-port; in a front
                                    process of its own, relayed from the router: metrics_relay.py)
    GET  /v1/models                 the one model this cluster serves
    POST /v1/completions            completions.py
    POST /v1/chat/completions       chat.py
    POST /v1/messages               messages.py (Anthropic)
    POST /generate                  sglang_generate.py (SGLang), with GET /get_weight_version
    POST /update_weights_from_disk  weights.py (SGLang): a rollout through the Admin service (admin token)

Every error is in the shape of its route's API (error_shapes.py), with the same statuses (errors.py):
a body pydantic cannot read, malformed JSON included, is 400 naming the field; an unknown path 404;
anything unexpected 500, and the server stays up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.exceptions import HTTPException

from epochserve.router.httpfront import chat, completions, messages, sglang_generate, weights
from epochserve.router.httpfront.anthropic_shapes import MessagesRequest
from epochserve.router.httpfront.error_shapes import failure_response
from epochserve.router.httpfront.errors import HttpFailure, http_failure
from epochserve.router.httpfront.front import Front
from epochserve.router.httpfront.guards import AdminTokenCheck, ApiKeyCheck, BodyLimit
from epochserve.router.httpfront.metrics_relay import MetricsRelay
from epochserve.router.httpfront.requests import ChatCompletionRequest, CompletionRequest
from epochserve.router.httpfront.responses import ModelCard, ModelList
from epochserve.router.httpfront.sglang_shapes import GenerateBody, UpdateWeightsBody

DEFAULT_MAX_BODY_BYTES = 4 * 2**20


def build_app(
    front: Front,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    api_key: str | None = None,
    metrics: CollectorRegistry | None = None,
    metrics_url: str | None = None,
) -> FastAPI:
    """`metrics`: the registry /metrics serves; or, in a front process of its own, `metrics_url`:
    the router's metrics endpoint, relayed. Neither: no /metrics."""
    app = FastAPI(title="epochserve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> Response:
        if not front.backend.is_serving:
            return JSONResponse({"status": "unavailable"}, 503)
        return JSONResponse({"status": "ok", "policy_version": front.backend.version})

    @app.get("/v1/models")
    async def models() -> Response:
        limits = front.backend.limits
        card = ModelCard(
            id=front.model_name,
            max_model_len=None if limits is None else limits.max_model_len,
            policy_version=front.backend.version,
        )
        return JSONResponse(ModelList(data=[card]).model_dump(mode="json"))

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest) -> Response:
        return await _respond(completions.create(front, body), completions.params_of(body))

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest) -> Response:
        return await _respond(chat.create(front, body), chat.params_of(body))

    @app.post("/v1/messages")
    async def create_message(body: MessagesRequest) -> Response:
        return await _respond(messages.create(front, body), messages.params_of(body), "/v1/messages")

    @app.post("/generate")
    async def generate(body: GenerateBody) -> Response:
        return await _respond(sglang_generate.generate(front, body), sglang_generate.params_of(body))

    @app.get("/get_weight_version")
    async def get_weight_version() -> Response:
        return await sglang_generate.weight_version(front)

    @app.post("/update_weights_from_disk")
    async def update_weights_from_disk(body: UpdateWeightsBody) -> Response:
        work = weights.update_weights_from_disk(front, body)
        return await _respond(work, weights.PARAMS, "/update_weights_from_disk")

    if metrics is not None:
        app.mount("/metrics", make_asgi_app(metrics))
    elif metrics_url is not None:
        app.mount("/metrics", MetricsRelay(metrics_url))
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    # Added last, so they run first: a refused credential never has its body read.
    if front.admin is not None:
        app.add_middleware(AdminTokenCheck, admin_token=front.admin.token)
    if api_key is not None:
        app.add_middleware(ApiKeyCheck, api_key=api_key)
    return app


async def _respond(work: Awaitable[Any], params: Mapping[str, str], path: str = "") -> Response:
    """The route's result as a response; what it raised as an error in the shape of `path`'s API."""
    try:
        result = await work
    except Exception as exc:
        return failure_response(http_failure(exc, params), path)
    if isinstance(result, dict):  # built as plain dicts, serialized once (never validated)
        return JSONResponse(result)
    assert isinstance(result, Response)
    return result


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> Response:
        error = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") == "json_invalid":
            failure = HttpFailure(400, f"malformed JSON: {error.get('msg', '')}", "invalid_json")
            return failure_response(failure, request.url.path)
        param = ".".join(location) or None
        message = f"{param or 'body'}: {error.get('msg', 'invalid')}"
        return failure_response(HttpFailure(400, message, "invalid_argument", param), request.url.path)

    @app.exception_handler(HTTPException)
    async def http_exception(request: Request, exc: HTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "http_error"
        return failure_response(HttpFailure(exc.status_code, str(exc.detail), code), request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        return failure_response(http_failure(exc), request.url.path)
