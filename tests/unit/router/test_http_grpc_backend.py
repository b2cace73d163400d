"""GrpcBackend (the Backend of an HTTP front process, --http-processes N > 1) against a real router
in this process: its RouterCore behind its own GenerationService on a gRPC server, and a scripted
worker (Worker.Session and GetWorkerInfo) behind the router's real registry and sessions.

What must hold: the messages are the router's; GetPolicy brings the version, the model limits and
whether the router stops; and every failure reaches the HTTP front as the exception the in-process
path (RouterBackend, on the same core) raises, so that the HTTP answer is the same: status,
message, param, Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from epochserve.controlplane.participants.router import ClusterView, WorkerView
from epochserve.proto.status import RETRY_PUSHBACK_KEY
from epochserve.proto.v1 import common_pb2, generation_pb2_grpc, worker_pb2, worker_pb2_grpc
from epochserve.router.admission import QueueLimits
from epochserve.router.core import RouterCore
from epochserve.router.httpfront.backend import RouterBackend
from epochserve.router.httpfront.errors import HTTP_STATUS, HttpFailure, http_failure
from epochserve.router.httpfront.grpc_backend import GrpcBackend
from epochserve.router.httpfront.rpc_errors import error_of
from epochserve.router.policies import make_policy
from epochserve.router.service import GenerationService
from epochserve.router.waiting import Deadline
from epochserve.sampling import ModelLimits

LIMITS = ModelLimits(vocab_size=500, max_model_len=64, max_n=4)
PARAMS = {"sampling.temperature": "temperature", "prompt_token_ids": "prompt", "n": "n"}
MAX_WAIT = 0.4  # the router's longest wait for a worker (then UNAVAILABLE)
RETRY_AFTER = 2.5  # the router's hint when a queue is full: Retry-After 3


class ScriptedWorker(worker_pb2_grpc.WorkerServicer):
    """Serves version 0 over Session: sample s of a request gets tokens 10*s+1, 10*s+2, ... up to
    max_tokens, a chunk each, then its finish."""

    async def GetWorkerInfo(self, request, context):
        return worker_pb2.GetWorkerInfoResponse(
            worker_id="w", vocab_size=LIMITS.vocab_size, max_model_len=LIMITS.max_model_len,
            max_n=LIMITS.max_n, model_path="/models/scripted",
        )  # fmt: skip

    async def Session(self, requests, context):
        async for message in requests:
            if message.WhichOneof("kind") != "generate":
                continue
            generate = message.generate
            for sample in range(generate.n or 1):
                for token in range(1, generate.sampling.max_tokens + 1):
                    chunk = common_pb2.GenerateChunk(token_ids=[10 * sample + token], logprobs=[-0.5])
                    yield self._response(message.stream_id, generate, sample, chunk=chunk)
                finish = common_pb2.GenerateFinish(
                    finish_reason=common_pb2.FINISH_REASON_LENGTH, worker_id="w",
                    num_prompt_tokens=len(generate.prompt_token_ids),
                    num_generated_tokens=generate.sampling.max_tokens,
                )  # fmt: skip
                yield self._response(message.stream_id, generate, sample, finish=finish)

    @staticmethod
    def _response(stream_id, generate, sample, **payload) -> worker_pb2.SessionResponse:
        response = common_pb2.GenerateResponse(
            request_id=generate.request_id,
            sample_index=sample,
            policy_version=generate.policy_version,
            **payload,
        )
        return worker_pb2.SessionResponse(stream_id=stream_id, response=response)


@dataclass
class Router:
    core: RouterCore
    grpc: GrpcBackend
    local: RouterBackend


@contextlib.asynccontextmanager
async def router(tmp_path, *, with_worker: bool, version: int = 0) -> AsyncIterator[Router]:
    """A router admitting `version`, with the scripted worker (serving 0) registered or none."""
    core = RouterCore.build(
        "router-t", make_policy("round-robin"), QueueLimits(1, MAX_WAIT, RETRY_AFTER),
        lambda address: grpc.aio.insecure_channel(address), use_session_link=False,
    )  # fmt: skip
    servers = []
    worker_server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(ScriptedWorker(), worker_server)
    worker_port = worker_server.add_insecure_port("127.0.0.1:0")
    router_server = grpc.aio.server()
    generation_pb2_grpc.add_GenerationServicer_to_server(GenerationService(core), router_server)
    target = f"unix:{tmp_path / 'generation.sock'}"  # as the router serves its front processes
    router_server.add_insecure_port(target)
    for server in (worker_server, router_server):
        await server.start()
        servers.append(server)
    core.switch_to(version)
    backend = GrpcBackend(target)
    try:
        if with_worker:
            worker = WorkerView("w", f"127.0.0.1:{worker_port}", 1, 8, 0, True)
            core.registry.update(ClusterView(1, 0, (worker,), is_committed_done=True))
            for _ in range(200):  # the registry reads GetWorkerInfo in the background
                if core.registry.limits is not None:
                    break
                await asyncio.sleep(0.01)
        await backend.start(timeout=5)
        yield Router(core, backend, RouterBackend(core))
    finally:
        await backend.close()
        await core.registry.close()
        for server in servers:
            await server.stop(0)


def request(request_id: str, max_tokens: int = 3, n: int = 2, temperature: float = 0.0, top_p: float = 1.0):
    generate = common_pb2.GenerateRequest(request_id=request_id, prompt_token_ids=[1, 2, 3], n=n)
    generate.sampling.max_tokens = max_tokens
    generate.sampling.temperature = temperature
    generate.sampling.top_p = top_p
    return generate


async def run(backend, generate, deadline: Deadline | None = None) -> list[common_pb2.GenerateResponse]:
    messages: list[common_pb2.GenerateResponse] = []

    async def write(message) -> None:
        messages.append(message)

    await backend.generate(generate, deadline or Deadline.after(10), write)
    return messages


async def failure(backend, generate, deadline: Deadline | None = None) -> HttpFailure:
    """The HTTP failure the front answers `generate` with, through `backend`."""
    with pytest.raises(Exception) as raised:
        await run(backend, generate, deadline)
    return http_failure(raised.value, PARAMS)


def tokens(messages) -> dict[int, list[int]]:
    by_sample: dict[int, list[int]] = {}
    for message in messages:
        chunk = message.finish.output if message.HasField("finish") else message.chunk
        by_sample.setdefault(message.sample_index, []).extend(chunk.token_ids)
    return by_sample


def test_generate_streams_what_the_in_process_path_streams_and_policy_brings_the_limits(tmp_path):
    async def scenario():
        async with router(tmp_path, with_worker=True) as r:
            assert (r.grpc.version, r.grpc.limits, r.grpc.is_serving) == (0, LIMITS, True)
            over_grpc = await run(r.grpc, request("via-grpc"))
            in_process = await run(r.local, request("in-process"))
            assert tokens(over_grpc) == tokens(in_process) == {0: [1, 2, 3], 1: [11, 12, 13]}
            assert [m.WhichOneof("payload") for m in over_grpc].count("finish") == 2
            assert {m.policy_version for m in over_grpc} == {0}
            r.core.is_accepting = False  # the router drains: /health must say so
            await r.grpc.refresh()
            assert not r.grpc.is_serving and r.grpc.version == 0

    asyncio.run(scenario())


def test_the_router_gone_is_not_serving_and_a_request_is_503(tmp_path):
    async def scenario():
        async with router(tmp_path, with_worker=False) as r:
            assert r.grpc.is_serving and r.grpc.limits is None  # no worker answered yet
            backend = GrpcBackend(f"unix:{tmp_path / 'nothing.sock'}")
            try:
                await backend.refresh()
                assert not backend.is_serving and backend.version is None
                lost = await failure(backend, request("lost"))
                assert (lost.status, lost.code) == (503, "unavailable")
            finally:
                await backend.close()

    asyncio.run(scenario())


async def _same_failure(
    r: Router, make, deadline_seconds: float | None = None
) -> tuple[HttpFailure, HttpFailure]:
    def deadline() -> Deadline | None:
        return None if deadline_seconds is None else Deadline.after(deadline_seconds)

    in_process = await failure(r.local, make("in-process"), deadline())
    over_grpc = await failure(r.grpc, make("via-grpc"), deadline())
    return in_process, over_grpc


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("invalid temperature", 400),
        ("invalid top_p", 400),
        ("invalid n", 400),
        ("shutting down", 503),
        ("no worker", 503),
    ],
)
def test_a_failure_is_the_same_http_answer_as_in_process(tmp_path, case, status):
    async def scenario():
        async with router(tmp_path, with_worker=False, version=2) as r:  # nothing serves version 2
            make = {
                "invalid temperature": lambda rid: request(rid, temperature=-1.0),
                "invalid top_p": lambda rid: request(rid, top_p=2.0),  # a field PARAMS does not rename
                "invalid n": lambda rid: request(rid, n=0),
                "shutting down": lambda rid: request(rid),
                "no worker": lambda rid: request(rid),
            }[case]
            if case == "shutting down":
                r.core.is_accepting = False
            in_process, over_grpc = await _same_failure(r, make)
            assert in_process.status == status
            assert over_grpc == _renamed(in_process, "in-process", "via-grpc")

    asyncio.run(scenario())


def test_a_full_queue_is_429_with_the_same_retry_after(tmp_path):
    async def scenario():
        async with router(tmp_path, with_worker=False, version=2) as r:
            waiting = asyncio.ensure_future(run(r.local, request("waiting")))  # holds the one place
            await asyncio.sleep(0.05)
            in_process, over_grpc = await _same_failure(r, request)
            waiting.cancel()
            assert (in_process.status, in_process.headers) == (429, {"Retry-After": "3"})
            assert over_grpc == _renamed(in_process, "in-process", "via-grpc")

    asyncio.run(scenario())


def test_a_deadline_while_waiting_is_504(tmp_path):
    async def scenario():
        async with router(tmp_path, with_worker=False, version=2) as r:
            in_process, over_grpc = await _same_failure(r, request, deadline_seconds=0.15)
            assert (in_process.status, in_process.code) == (over_grpc.status, over_grpc.code)
            assert (over_grpc.status, over_grpc.code) == (504, "deadline_exceeded")

    asyncio.run(scenario())


def test_abort_reaches_the_routers_request_and_it_ends_aborted(tmp_path):
    async def scenario():
        async with router(tmp_path, with_worker=False, version=2) as r:
            answers = []
            for backend, rid in ((r.local, "in-process"), (r.grpc, "via-grpc")):
                waiting = asyncio.ensure_future(failure(backend, request(rid)))
                while rid not in r.core.inflight:
                    await asyncio.sleep(0.01)
                assert await backend.abort(rid) and not await backend.abort("unknown")
                answers.append(await asyncio.wait_for(waiting, 5))
            in_process, over_grpc = answers
            assert in_process.status == 409
            assert over_grpc == _renamed(in_process, "in-process", "via-grpc")

    asyncio.run(scenario())


def _renamed(failure: HttpFailure, old: str, new: str) -> HttpFailure:
    """`failure` for the request named `new` (the messages name the request id)."""
    return HttpFailure(
        failure.status, failure.message.replace(old, new), failure.code, failure.param, failure.headers
    )


def rpc_error(code: grpc.StatusCode, details: str, trailing=()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK])
def test_every_status_gets_the_http_status_and_message_the_router_path_gets(code):
    """An in-process front sees a status another server answered with as is (proto/status.py
    passes it on); the typed errors it sees for the router's own refusals map to the same."""
    details = (
        "sampling.temperature: must be >= 0" if code == grpc.StatusCode.INVALID_ARGUMENT else "request r: why"
    )
    exc = rpc_error(code, details)
    failure = http_failure(error_of(exc), PARAMS)
    assert failure == http_failure(exc, PARAMS)
    assert (failure.status, failure.message) == (HTTP_STATUS.get(code, 500), details)
    assert failure.code == code.name.lower()


def test_a_refusal_names_its_field_and_a_full_queue_keeps_its_retry_hint():
    refused = http_failure(
        error_of(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "n: must be in 1..4")), PARAMS
    )
    assert (refused.status, refused.param, refused.message) == (400, "n", "n: must be in 1..4")
    # A worker's refusal, passed on by the router with the request id first: as in process.
    details = "request r: prompt_token_ids: id 900 is out of the vocabulary"
    passed_on = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, details)
    assert http_failure(error_of(passed_on), PARAMS) == http_failure(passed_on, PARAMS)
    assert http_failure(error_of(passed_on), PARAMS).param == "prompt"
    full = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", ((RETRY_PUSHBACK_KEY, "2500"),))
    assert http_failure(error_of(full)).headers == {"Retry-After": "3"}
    assert http_failure(error_of(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full"))).headers == {
        "Retry-After": "1"
    }
