"""A scripted router behind the real HTTP front, for unit tests without processes: the app served by
HttpServer on a loop in a thread, a byte-level codec (token id = one UTF-8 byte, 256 = end of turn)
and a backend that answers every request with REPLY's bytes, chunk by chunk (with prompt logprobs
when asked). The chat template renders each message as `role: content\n`."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from epochserve.proto.results import tokens_of
from epochserve.proto.v1 import common_pb2
from epochserve.router.attempt import Send
from epochserve.router.httpfront.app import build_app
from epochserve.router.httpfront.front import AdminAccess, Front
from epochserve.router.httpfront.server import HttpServer
from epochserve.router.waiting import Deadline
from epochserve.sampling import ModelLimits

REPLY = "héllo wörld 🎉 STOP tail"
EOT = 256
VERSION = 7
LIMITS = ModelLimits(vocab_size=257, max_model_len=512, max_n=4)
CHUNK = 3  # tokens per streamed chunk


class ByteCodec:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def chat_prompt(
        self, messages: list[dict], tools: Any, add_generation_prompt: bool, kwargs: Any
    ) -> list[int]:
        return self.encode("".join(f"{m['role']}: {m.get('content', '')}\n" for m in messages))

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t for t in token_ids if t < 256).decode(errors="replace")

    def token_text(self, token_id: int) -> str:
        return "<eot>" if token_id == EOT else bytes([token_id]).decode(errors="replace")


def logprob(sample: int, position: int) -> float:
    return -0.01 * (position + 1) - sample


def prompt_logprob(position: int) -> float:
    """The scripted score of prompt token `position` (>= 1), the same for every sample."""
    return -0.1 * position


MOE_LAYERS = 2
ROUTED_TOP_K = 2


def experts(position: int) -> list[int]:
    """The scripted routing of one position (layer-major: MOE_LAYERS × ROUTED_TOP_K expert ids).
    Prompt positions are < 1000; generated token p of sample s is position 1000 * (s + 1) + p."""
    return [(position + layer * 3 + j) % 64 for layer in range(MOE_LAYERS) for j in range(ROUTED_TOP_K)]


def token_position(sample: int, position: int) -> int:
    return 1000 * (sample + 1) + position


def refused_as_dense(request_id: str) -> grpc.aio.AioRpcError:
    """What a worker serving a dense model answers return_routed_experts with, as the router passes
    it on (engine.check_supported's field and message)."""
    details = (f"request {request_id}: sampling.return_routed_experts: the served model "
               "(LlamaForCausalLM) is dense: it routes no token to experts")  # fmt: skip
    return grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), details
    )


@dataclass
class ScriptedBackend:
    version: int | None = VERSION
    limits: ModelLimits | None = LIMITS
    is_serving: bool = True
    fail_with: Exception | None = None  # raised instead of answering
    fail_after_first: Exception | None = None  # raised once the first message went out
    is_moe: bool = False  # a mixture-of-experts model: routed experts on request (else refused)
    requests: list[common_pb2.GenerateRequest] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)

    async def generate(self, request: common_pb2.GenerateRequest, deadline: Deadline, write: Send) -> None:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        if request.sampling.return_routed_experts and not self.is_moe:
            raise refused_as_dense(request.request_id)
        tokens = [*REPLY.encode(), EOT]
        limit = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else len(tokens)
        tokens = tokens[:limit]
        reason = common_pb2.FINISH_REASON_STOP if tokens[-1] == EOT else common_pb2.FINISH_REASON_LENGTH
        final = request.output_mode == common_pb2.OUTPUT_MODE_FINAL
        for sample in range(request.n):
            sent = 0
            step = len(tokens) if final else CHUNK
            message = self._message(request, sample)
            while sent < len(tokens):
                if request.request_id in self.aborted:
                    reason = common_pb2.FINISH_REASON_ABORT
                    break
                chunk = tokens_of(message) if final else message.chunk
                if sent == 0 and request.sampling.return_prompt_logprobs:  # in a sample's first chunk
                    chunk.prompt_logprobs.extend(
                        prompt_logprob(i) for i in range(1, len(request.prompt_token_ids))
                    )
                ids = tokens[sent : sent + step]
                chunk.token_ids.extend(ids)
                chunk.logprobs.extend(logprob(sample, p) for p in range(sent, sent + len(ids)))
                if request.sampling.return_raw_logprobs:
                    chunk.raw_logprobs.extend(-1.0 for _ in ids)
                if request.sampling.return_routed_experts:
                    add_routing(chunk, request, sample, sent, len(ids))
                for _ in ids:
                    top = chunk.top_logprobs.add()
                    top.token_ids.extend([101, 102][: request.sampling.num_top_logprobs])
                    top.logprobs.extend([-0.5, -1.5][: request.sampling.num_top_logprobs])
                sent += len(ids)
                if not final:
                    await write(message)
                    message = self._message(request, sample)
                    if self.fail_after_first is not None:
                        raise self.fail_after_first
                await asyncio.sleep(0)
            finish = message.finish
            finish.finish_reason = reason
            finish.num_generated_tokens = sent
            await write(message)

    def _message(self, request: common_pb2.GenerateRequest, sample: int) -> common_pb2.GenerateResponse:
        return common_pb2.GenerateResponse(
            request_id=request.request_id, sample_index=sample, policy_version=VERSION
        )

    async def abort(self, request_id: str) -> bool:
        self.aborted.append(request_id)
        return True

    async def refresh(self) -> None:
        pass


def add_routing(
    chunk: common_pb2.GenerateChunk, request: common_pb2.GenerateRequest, sample: int, sent: int, num: int
) -> None:
    """The scripted routing of `num` tokens from position `sent` (and the prompt's, in the first chunk)."""
    chunk.routed_top_k = ROUTED_TOP_K
    for position in range(sent, sent + num):
        chunk.routed_experts.add().expert_ids.extend(experts(token_position(sample, position)))
    if sent == 0:
        for position in range(len(request.prompt_token_ids)):
            chunk.prompt_routed_experts.add().expert_ids.extend(experts(position))


def serve(**options: Any) -> Iterator[ServedFront]:
    """A module fixture's body: the front on a scripted backend, closed at the end."""
    front = ServedFront(ScriptedBackend(), **options)
    yield front
    front.close()


class ServedFront:
    """The app on a free port, on an event loop of its own thread."""

    def __init__(self, backend: ScriptedBackend, admin: AdminAccess | None = None, **options: Any) -> None:
        self.backend = backend
        app = build_app(Front(backend, ByteCodec(), "tiny", admin), **options)  # type: ignore[arg-type]
        self.server = HttpServer(app, "127.0.0.1", 0)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/v1"

    def fresh_backend(self) -> ScriptedBackend:
        """The same backend with a fresh script (a test's own), behind the same server."""
        self.backend.__init__()  # type: ignore[misc]
        return self.backend

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def post(
        self, path: str, body: bytes | dict, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        """(status, headers, JSON body or the raw text of a stream)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        return self._open(request)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        return self._open(
            urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        )

    def _open(self, request: urllib.request.Request) -> tuple[int, Any, Any]:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, headers, raw = e.code, e.headers, e.read()
        text = raw.decode()
        return (
            status,
            headers,
            (text if headers.get_content_type() == "text/event-stream" else json.loads(text)),
        )
