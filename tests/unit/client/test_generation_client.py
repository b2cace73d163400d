"""The blocking GenerationClient over its asyncio core (client/generation.py, client/loop_thread.py),
against an in-process fake Generation service: what the sync facade adds to the async client (its
loop thread, bounded waits, cancellation of an abandoned stream or an interrupted call, fork) and
that both clients give the same results and the same typed errors."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from epochserve.client.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    RequestCancelledError,
    ResourceExhaustedError,
    UnavailableError,
)
from epochserve.client.generation import AsyncGenerationClient, GenerationClient
from epochserve.client.loop_thread import LoopClosedError, LoopThread, LoopWaitTimeout
from epochserve.net import free_port
from epochserve.proto.results import SampleFinished, TokenChunk
from epochserve.proto.status import RETRY_PUSHBACK_KEY
from epochserve.proto.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from epochserve.sampling import SamplingParams

VERSION = 3


class FakeRouter(generation_pb2_grpc.GenerationServicer):
    """Generate answers by the request id: "slow*" streams a token every 20 ms until cancelled,
    "full*" is RESOURCE_EXHAUSTED with a retry hint, "invalid*" INVALID_ARGUMENT; anything else gets
    `max_tokens` tokens per sample. Remembers which requests ended cancelled."""

    def __init__(self) -> None:
        self.cancelled: dict[str, threading.Event] = {}
        self.active: set[str] = set()

    def Generate(self, request, context):
        rid = request.request_id
        self.cancelled[rid] = threading.Event()
        if rid.startswith("full"):
            context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, "1500"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{rid}: queue full")
        if rid.startswith("invalid"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{rid}: bad prompt")
        self.active.add(rid)
        try:
            if rid.startswith("slow"):  # it ends only when the client cancels it
                context.add_callback(self.cancelled[rid].set)
                token = 0
                while context.is_active():
                    yield chunk(request, 0, [token])
                    token += 1
                    time.sleep(0.02)
                return
            for index in range(request.n):
                for token in range(request.sampling.max_tokens):
                    yield chunk(request, index, [100 + token])
                yield common_pb2.GenerateResponse(
                    request_id=rid,
                    sample_index=index,
                    policy_version=VERSION,
                    finish=common_pb2.GenerateFinish(
                        finish_reason=common_pb2.FINISH_REASON_LENGTH,
                        num_prompt_tokens=len(request.prompt_token_ids),
                        num_generated_tokens=request.sampling.max_tokens,
                        worker_id="worker-7",
                    ),
                )
        finally:
            self.active.discard(rid)

    def Abort(self, request, context):
        found = request.request_id in self.active
        return common_pb2.AbortResponse(request_id=request.request_id, found=found)

    def GetPolicy(self, request, context):
        return generation_pb2.GetPolicyResponse(
            policy_version=VERSION, rollout_done=True, num_workers_serving=1, num_workers=2, router_id="fake"
        )


def chunk(request: common_pb2.GenerateRequest, index: int, tokens: list[int]) -> common_pb2.GenerateResponse:
    return common_pb2.GenerateResponse(
        request_id=request.request_id,
        sample_index=index,
        policy_version=VERSION,
        chunk=common_pb2.GenerateChunk(token_ids=tokens, logprobs=[-0.5] * len(tokens)),
    )


@pytest.fixture(scope="module")
def router() -> Iterator[tuple[str, FakeRouter]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    fake = FakeRouter()
    generation_pb2_grpc.add_GenerationServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", fake
    server.stop(0).wait(5)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("GenerationClient(")]


def wait_for(condition, seconds: float = 5.0) -> bool:
    ends = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > ends:
            return False
        time.sleep(0.01)
    return True


SAMPLING = SamplingParams(max_tokens=3)


def test_the_blocking_client_returns_what_the_async_one_does(router):
    address, _fake = router
    with GenerationClient(address, timeout=10) as client:
        result = client.generate([1, 2, 3], SAMPLING, n=2, request_id="same")
        streamed = list(client.stream([1, 2, 3], SAMPLING, request_id="s"))
        sent = client.send(common_pb2.GenerateRequest(prompt_token_ids=[4], sampling={"max_tokens": 2}, n=1))
        policy = client.get_policy()
        assert not client.abort("no-such-request")

    async def with_async() -> tuple:
        async with AsyncGenerationClient(address, timeout=10) as client:
            return (
                await client.generate([1, 2, 3], SAMPLING, n=2, request_id="same"),
                [e async for e in client.stream([1, 2, 3], SAMPLING, request_id="s")],
                await client.get_policy(),
            )

    expected, expected_stream, expected_policy = asyncio.run(with_async())
    assert result.request_id == "same" and result.policy_version == VERSION
    assert result.samples == expected.samples
    assert [s.token_ids for s in result.samples] == [(100, 101, 102)] * 2
    assert [type(e) for e in streamed] == [TokenChunk] * 3 + [SampleFinished]
    assert [e.token_ids for e in streamed[:3]] == [e.token_ids for e in expected_stream[:3]]
    assert sent.request_id and sent.samples[0].token_ids == (100, 101)
    assert policy == expected_policy and policy.router_id == "fake"


def test_errors_are_the_typed_ones_with_the_status(router):
    address, _fake = router
    with GenerationClient(address, timeout=10) as client:
        with pytest.raises(ResourceExhaustedError) as full:
            client.generate([1], SAMPLING, request_id="full-1")
        assert full.value.retry_after_seconds == 1.5 and full.value.request_id == "full-1"
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue full" in full.value.details
        stream = client.stream([1], SAMPLING, request_id="invalid-1")
        with pytest.raises(InvalidArgumentError, match="invalid-1: bad prompt"):
            next(stream)
        with pytest.raises(StopIteration):
            next(stream)


def test_a_blocking_call_to_an_unreachable_router_fails_in_its_timeout_as_before():
    address = f"127.0.0.1:{free_port()}"  # nothing listens
    with GenerationClient(address, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):  # wait_for_ready: it waits its whole deadline
            client.generate([1], SAMPLING)
        with pytest.raises(DeadlineExceededError):
            next(client.stream([1], SAMPLING, timeout=0.3))
        with pytest.raises(UnavailableError):
            client.get_policy(timeout=5, wait_for_ready=False)
        assert time.monotonic() - started < 3
    with (
        GenerationClient(address, timeout=5, wait_for_ready=False) as client,
        pytest.raises(UnavailableError),
    ):
        client.generate([1], SAMPLING)


def test_an_abandoned_blocking_stream_cancels_its_rpc(router):
    address, fake = router
    with GenerationClient(address, timeout=30) as client:
        stream = client.stream([1], SAMPLING, request_id="slow-closed")
        assert isinstance(next(stream), TokenChunk) and isinstance(next(stream), TokenChunk)
        stream.close()
        assert fake.cancelled["slow-closed"].wait(5), "closing the stream cancels the request"
        for event in client.stream([1], SAMPLING, request_id="slow-dropped"):
            assert isinstance(event, TokenChunk)
            break  # the generator is dropped here, unclosed
        gc.collect()
        assert fake.cancelled["slow-dropped"].wait(5), "dropping the stream cancels the request"
        assert client.generate([1], SAMPLING).samples, "the client goes on serving"


def test_an_interrupted_blocking_call_cancels_its_rpc(router):
    address, fake = router
    main = threading.main_thread()
    assert threading.current_thread() is main
    # Ctrl-C as an interactive process gets it: a suite started in the background by a
    # non-interactive shell inherits SIGINT ignored (POSIX), and Python leaves it so.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupt_two_calls(address, fake, main)
    finally:
        signal.signal(signal.SIGINT, inherited)


def interrupt_two_calls(address: str, fake, main: threading.Thread) -> None:
    with GenerationClient(address, timeout=30) as client:
        for request_id, call in (
            ("slow-sent", lambda: client.generate([1], SAMPLING, request_id="slow-sent")),
            ("slow-streamed", lambda: list(client.stream([1], SAMPLING, request_id="slow-streamed"))),
        ):
            timer = threading.Timer(0.3, signal.pthread_kill, (main.ident, signal.SIGINT))
            timer.start()
            started = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                call()
            timer.join()
            assert time.monotonic() - started < 5
            assert fake.cancelled[request_id].wait(5), f"{request_id}: Ctrl-C cancels the request"
        assert client.get_policy().policy_version == VERSION


def test_close_cancels_calls_in_flight_and_ends_the_loop_thread(router):
    address, fake = router
    client = GenerationClient(address, timeout=30)
    [thread] = [t for t in loop_threads() if t.name == f"GenerationClient({address})"]
    assert thread.daemon
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.generate([1], SAMPLING, request_id="slow-at-close")
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    idle = client.stream([1], SAMPLING, request_id="slow-idle")
    next(idle)  # an open stream nobody reads at the moment
    assert wait_for(lambda: "slow-at-close" in fake.active)
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 5
    caller.join(5)
    assert not thread.is_alive()
    [error] = errors
    assert isinstance(error, RequestCancelledError) and error.request_id == "slow-at-close"
    assert fake.cancelled["slow-at-close"].wait(5) and fake.cancelled["slow-idle"].wait(5)
    with pytest.raises(RequestCancelledError):
        next(idle)
    with pytest.raises(ValueError, match="closed"):
        client.generate([1], SAMPLING)
    client.close()  # again: nothing to do


def test_many_clients_leave_no_thread_behind(router):
    address, _fake = router
    before = {t.ident for t in threading.enumerate()}
    for i in range(20):
        with GenerationClient(address, timeout=10) as client:
            if i % 2:
                client.get_policy()
    dropped = GenerationClient(address)  # never closed: garbage collection stops its thread
    dropped.get_policy()
    del dropped
    gc.collect()
    assert wait_for(lambda: not loop_threads()), loop_threads()
    # Besides the fake router's pool, which grows: gRPC's asyncio poller, one per process at most
    # (it stops when the last asyncio channel closes, and starts again with the next).
    new = [t.name for t in threading.enumerate() if t.ident not in before]
    others = [name for name in new if not name.startswith("ThreadPoolExecutor")]
    assert len(others) <= 1 and all(name.endswith("(_poll_wrapper)") for name in others), new


def test_the_blocking_client_keeps_the_async_ones_signatures_and_attributes(router):
    address, _fake = router
    for name in ("__init__", "generate", "stream", "send", "abort", "get_policy"):
        sync, core = (inspect.signature(getattr(c, name)) for c in (GenerationClient, AsyncGenerationClient))
        assert list(sync.parameters.values()) == list(core.parameters.values()), name
        assert getattr(GenerationClient, name).__doc__ == getattr(AsyncGenerationClient, name).__doc__
    with GenerationClient(address) as client:
        assert client.timeout == 600.0 and client.wait_for_ready and client.target == address
        client.timeout = 7.0
        assert client._core.timeout == 7.0


def test_a_forked_child_refuses_the_parents_client_at_once(router):
    address, _fake = router
    with GenerationClient(address, timeout=10) as client:
        client.get_policy()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no loop thread here; a call must fail, not hang
            outcome = b"hang"
            try:
                client.get_policy()
                outcome = b"ok"
            except RuntimeError as exc:
                outcome = b"refused" if "fork" in str(exc) else repr(exc).encode()
            finally:
                os.write(write, outcome)
                os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.read(read, 200) == b"refused" and status == 0
        os.close(read)
        assert client.get_policy().policy_version == VERSION, "the parent's client still works"


def test_the_blocking_client_works_inside_a_running_event_loop(router):
    """A blocking call made from async code runs on the client's loop, not the caller's."""
    address, fake = router

    async def scenario() -> int:
        with GenerationClient(address, timeout=10) as client:
            stream = client.stream([1], SAMPLING, request_id="slow-in-loop")
            next(stream)
            stream.close()
            return len(client.generate([1], SAMPLING).samples)

    assert asyncio.run(scenario()) == 1
    assert fake.cancelled["slow-in-loop"].wait(5)


def test_loop_thread_bounds_every_wait_and_cancels_what_it_gives_up():
    loop = LoopThread("test-loop")
    ended = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.set()

    async def fail() -> None:
        raise TimeoutError("the coroutine's own")

    with pytest.raises(LoopWaitTimeout):
        loop.run(forever(), 0.2)
    assert ended.is_set(), "the task was cancelled before run() returned"
    with pytest.raises(TimeoutError, match="the coroutine's own"):  # not mistaken for the wait's
        loop.run(fail(), 5)
    assert loop.run(asyncio.sleep(0, "x"), None) == "x"

    async def on_own_loop() -> None:
        loop.run(asyncio.sleep(0), 1)

    with pytest.raises(RuntimeError, match="deadlock"):
        loop.run(on_own_loop(), 5)
    ended.clear()
    outcome: list[BaseException] = []

    def wait_forever() -> None:
        try:
            loop.run(forever(), None)
        except BaseException as exc:
            outcome.append(exc)

    pending = threading.Thread(target=wait_forever)
    pending.start()
    time.sleep(0.1)
    loop.stop(timeout=5)
    pending.join(5)
    assert ended.is_set() and not pending.is_alive() and not loop.thread.is_alive()
    assert [type(e) for e in outcome] == [futures.CancelledError], "stop() ends every wait"
    with pytest.raises(LoopClosedError):
        loop.run(asyncio.sleep(0), 1)
    loop.stop()
