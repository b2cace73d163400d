"""Python client of the Generation service (a router): blocking and asyncio.

    with GenerationClient("127.0.0.1:50050") as client:
        result = client.generate([1, 17, 33], SamplingParams(temperature=1.0, max_tokens=64), n=8)
        result.policy_version                     # one version for all 8 samples (I1)
        result.samples[0].token_ids, result.samples[0].processed_logprobs

    async with AsyncGenerationClient("127.0.0.1:50050") as client:
        async for event in client.stream(prompt, sampling):   # TokenChunk ... SampleFinished
            ...

`output_mode=OutputMode.FINAL` asks for one message per sample, sent when it ends, instead of a
chunk per engine step: the same results for a caller that waits for them anyway (generate), at a
fraction of the messages; a stream then yields only SampleFinished events.

Results are typed (proto/results.py); failures raise a GenerationError subclass carrying the
gRPC status (client/errors.py), e.g. ResourceExhaustedError with `retry_after_seconds`.
A response is checked on arrival: two policy versions in one response raise MixedVersionError.

Calls wait for the router to be reachable (wait_for_ready) within their timeout, so a router
restarting on the same address is picked up again. Each call carries a request id (generated
when not given) that `abort` and the error messages use.

One implementation: AsyncGenerationClient talks to the router; GenerationClient runs one on a
private event loop in a daemon thread of its own (client/loop_thread.py), started when it is made
and stopped by close(). Each blocking call submits the coroutine to that loop and waits at most
its timeout plus CALL_MARGIN_SECONDS; a blocking stream pulls one event at a time from the async
one. Leaving a call early (KeyboardInterrupt, closing or dropping a stream) cancels the coroutine,
and with it the RPC. After a fork, the child makes its own clients: the parent's refuse to work.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import grpc

from epochserve.channels import CLIENT_CHANNEL_OPTIONS, ClientTls, aio_channel
from epochserve.client.errors import DeadlineExceededError, RequestCancelledError, error_from_rpc
from epochserve.client.loop_thread import LoopClosedError, LoopThread, LoopWaitTimeout
from epochserve.proto.convert import OutputMode, limits_from_policy, sampling_to_proto
from epochserve.proto.results import GenerateResult, ResponseAssembler, StreamEvent
from epochserve.proto.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from epochserve.sampling import ModelLimits, SamplingParams

DEFAULT_TIMEOUT_SECONDS = 600.0
Prompt = Sequence[int] | str  # token ids, or text the worker tokenizes
T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """GetPolicy: the version a router pins new requests to, and whether its rollout is DONE."""

    policy_version: int
    rollout_done: bool
    num_workers_serving: int
    num_workers: int
    router_id: str
    model_path: str  # the workers' model directory (on their machines); "" until one answered
    limits: ModelLimits | None = None  # what the router checks requests against; None: no worker yet
    stopping: bool = False  # the router drains before it stops: it admits no new request


def build_request(
    prompt: Prompt,
    sampling: SamplingParams | None = None,
    *,
    n: int = 1,
    min_policy_version: int | None = None,
    request_id: str = "",
    output_mode: OutputMode = OutputMode.STREAM,
) -> common_pb2.GenerateRequest:
    """A GenerateRequest; a fresh request id when none is given."""
    request = common_pb2.GenerateRequest(
        request_id=request_id or uuid.uuid4().hex,
        sampling=sampling_to_proto(sampling or SamplingParams()),
        n=n,
        output_mode=OutputMode(output_mode).to_proto(),
    )
    if isinstance(prompt, str):
        request.prompt_text = prompt
    else:
        request.prompt_token_ids.extend(prompt)
    if min_policy_version is not None:
        request.min_policy_version = min_policy_version
    return request


def _with_request_id(request: common_pb2.GenerateRequest) -> common_pb2.GenerateRequest:
    if request.request_id:
        return request
    named = common_pb2.GenerateRequest()
    named.CopyFrom(request)
    named.request_id = uuid.uuid4().hex
    return named


def _policy_info(response: generation_pb2.GetPolicyResponse) -> PolicyInfo:
    return PolicyInfo(
        response.policy_version,
        response.rollout_done,
        response.num_workers_serving,
        response.num_workers,
        response.router_id,
        response.model_path,
        limits_from_policy(response),
        response.stopping,
    )


class AsyncGenerationClient:
    """asyncio client; use from one event loop (any number of concurrent calls)."""

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTls | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        wait_for_ready: bool = True,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._channel = aio_channel(target, CLIENT_CHANNEL_OPTIONS, tls)
        self._stub = generation_pb2_grpc.GenerationStub(self._channel)

    async def __aenter__(self) -> AsyncGenerationClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        *,
        n: int = 1,
        min_policy_version: int | None = None,
        request_id: str = "",
        timeout: float | None = None,
        output_mode: OutputMode = OutputMode.STREAM,
    ) -> GenerateResult:
        """Run a request to completion (the same result in either output mode). Raises a
        GenerationError subclass."""
        request = build_request(
            prompt, sampling, n=n, min_policy_version=min_policy_version, request_id=request_id,
            output_mode=output_mode,
        )  # fmt: skip
        return await self.send(request, timeout)

    async def send(self, request: common_pb2.GenerateRequest, timeout: float | None = None) -> GenerateResult:
        """Run a ready-made GenerateRequest to completion (a copy gets a request id if it has none)."""
        request = _with_request_id(request)
        started = time.monotonic()
        assembler = ResponseAssembler()
        async for _ in self._events(request, timeout, assembler):
            pass
        return assembler.result(request.request_id, started)

    def stream(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        *,
        n: int = 1,
        min_policy_version: int | None = None,
        request_id: str = "",
        timeout: float | None = None,
        output_mode: OutputMode = OutputMode.STREAM,
    ) -> AsyncIterator[StreamEvent]:
        """Events as they arrive (TokenChunk, SampleFinished; FINAL: SampleFinished only). Stopping
        early cancels the request."""
        request = build_request(
            prompt, sampling, n=n, min_policy_version=min_policy_version, request_id=request_id,
            output_mode=output_mode,
        )  # fmt: skip
        return self._events(request, timeout, ResponseAssembler())

    async def abort(self, request_id: str, timeout: float = 10.0) -> bool:
        """Abort a request in flight at this router; False when it knows no such request."""
        try:
            response = await self._stub.Abort(common_pb2.AbortRequest(request_id=request_id), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, request_id) from None
        return bool(response.found)

    async def get_policy(self, timeout: float = 10.0, wait_for_ready: bool | None = None) -> PolicyInfo:
        """wait_for_ready: None takes the client's; False fails at once when nothing listens."""
        wait = self.wait_for_ready if wait_for_ready is None else wait_for_ready
        try:
            response = await self._stub.GetPolicy(
                generation_pb2.GetPolicyRequest(), timeout=timeout, wait_for_ready=wait
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None
        return _policy_info(response)

    async def _events(
        self, request: common_pb2.GenerateRequest, timeout: float | None, assembler: ResponseAssembler
    ) -> AsyncGenerator[StreamEvent, None]:
        call = self._stub.Generate(
            request,
            timeout=timeout if timeout is not None else self.timeout,
            wait_for_ready=self.wait_for_ready,
        )
        try:
            async for response in call:
                yield assembler.add(response)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, request.request_id) from None
        finally:
            call.cancel()


CALL_MARGIN_SECONDS = 5.0  # a blocking call waits this long past its deadline for the loop's answer
CLOSE_TIMEOUT_SECONDS = 10.0  # close(): each step (channel, tasks left, thread) waits at most this


def _twin(
    core: Callable[Concatenate[Any, P], object], returns: str
) -> Callable[[Callable[..., R]], Callable[Concatenate[Any, P], R]]:
    """Give a GenerationClient method the parameters and docstring of its AsyncGenerationClient
    twin, declared once there (for type checkers, inspect and help()); `returns` is its own result."""

    def declare(method: Callable[..., R]) -> Callable[Concatenate[Any, P], R]:
        method.__doc__ = core.__doc__
        signature = inspect.signature(core).replace(return_annotation=returns)
        setattr(method, "__signature__", signature)  # noqa: B010 (not an attribute of Callable for mypy)
        return method

    return declare


class GenerationClient:
    """Blocking client; thread-safe (one channel, any number of concurrent calls).

    An AsyncGenerationClient does the work, on a private event loop in a daemon thread that this
    client starts and that close() (or the client's garbage collection, or the interpreter's exit)
    stops. A call waits at most its timeout plus CALL_MARGIN_SECONDS: one without a timeout
    (`timeout=None` here and on the client) waits until it ends, and KeyboardInterrupt cancels it.
    """

    @_twin(AsyncGenerationClient.__init__, returns="None")
    def __init__(self, target: str, **options: Any) -> None:
        self.target = target
        self._loop = LoopThread(f"GenerationClient({target})")
        try:
            self._core = self._loop.run(_open(target, options), CLOSE_TIMEOUT_SECONDS)
        except BaseException:
            self._loop.stop()
            raise
        self._closer = weakref.finalize(self, _shutdown, self._loop, self._core)

    @property
    def timeout(self) -> float | None:
        """Default deadline of a call, seconds (None: none)."""
        return self._core.timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._core.timeout = value

    @property
    def wait_for_ready(self) -> bool:
        return self._core.wait_for_ready

    @wait_for_ready.setter
    def wait_for_ready(self, value: bool) -> None:
        self._core.wait_for_ready = value

    def __enter__(self) -> GenerationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the calls in flight (RequestCancelledError), close the channel, end the thread."""
        self._closer()

    @_twin(AsyncGenerationClient.generate, returns="GenerateResult")
    def generate(self, *args: Any, timeout: float | None = None, **request: Any) -> GenerateResult:
        return self.send(build_request(*args, **request), timeout)

    def send(self, request: common_pb2.GenerateRequest, timeout: float | None = None) -> GenerateResult:
        """Run a ready-made GenerateRequest to completion (a copy gets a request id if it has none)."""
        request = _with_request_id(request)
        return self._run(self._core.send(request, timeout), self._deadline(timeout), request.request_id)

    @_twin(AsyncGenerationClient.stream, returns="Iterator[StreamEvent]")
    def stream(self, *args: Any, timeout: float | None = None, **request: Any) -> Iterator[StreamEvent]:
        return self._events(build_request(*args, **request), timeout)

    def abort(self, request_id: str, timeout: float = 10.0) -> bool:
        """Abort a request in flight at this router; False when it knows no such request."""
        return self._run(self._core.abort(request_id, timeout), timeout, request_id)

    def get_policy(self, timeout: float = 10.0, wait_for_ready: bool | None = None) -> PolicyInfo:
        """wait_for_ready: None takes the client's; False fails at once when nothing listens."""
        return self._run(self._core.get_policy(timeout, wait_for_ready), timeout)

    def _deadline(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.timeout

    def _run(
        self, coro: Coroutine[Any, Any, T], timeout: float | None, request_id: str = "", started: bool = False
    ) -> T:
        """coro's result, run on the loop within timeout + CALL_MARGIN_SECONDS; the errors of a
        blocking gRPC channel where the loop adds its own (closed, cancelled by close(), no answer)."""
        bound = None if timeout is None else max(timeout, 0.0) + CALL_MARGIN_SECONDS
        try:
            return self._loop.run(coro, bound)
        except (LoopClosedError, concurrent.futures.CancelledError) as exc:  # close() came first
            if isinstance(exc, LoopClosedError) and not started:
                raise ValueError("Cannot invoke RPC on closed channel!") from None
            raise RequestCancelledError(grpc.StatusCode.CANCELLED, "Channel closed!", request_id) from None
        except LoopWaitTimeout:
            details = f"no answer within the deadline ({timeout} s) and {CALL_MARGIN_SECONDS} s more"
            raise DeadlineExceededError(grpc.StatusCode.DEADLINE_EXCEEDED, details, request_id) from None

    def _events(self, request: common_pb2.GenerateRequest, timeout: float | None) -> Iterator[StreamEvent]:
        """The core's stream, one event a round trip to the loop, all within the call's deadline;
        leaving early (close, garbage collection, an exception) closes it, which cancels the RPC."""
        events = self._core._events(request, timeout, ResponseAssembler())
        deadline = self._deadline(timeout)
        ends_at = None if deadline is None else time.monotonic() + deadline
        started = ended = False
        try:
            while True:
                remaining = None if ends_at is None else ends_at - time.monotonic()
                event = self._run(_next_event(events), remaining, request.request_id, started)
                started = True
                if event is None:
                    ended = True
                    return
                yield event
        finally:
            if started and not ended:
                with contextlib.suppress(RuntimeError, LoopWaitTimeout, concurrent.futures.CancelledError):
                    self._loop.run(_close_events(events), CALL_MARGIN_SECONDS)


async def _open(target: str, options: dict[str, Any]) -> AsyncGenerationClient:
    """The blocking client's core, made on its loop (an asyncio channel belongs to one loop)."""
    return AsyncGenerationClient(target, **options)


def _shutdown(loop: LoopThread, core: AsyncGenerationClient) -> None:
    loop.stop(core.close(), CLOSE_TIMEOUT_SECONDS)


async def _next_event(events: AsyncGenerator[StreamEvent, None]) -> StreamEvent | None:
    """The next event, None at the end; advanced on the loop, so that the loop's async-generator
    hooks (not the calling thread's) own the stream."""
    try:
        return await anext(events)
    except StopAsyncIteration:
        return None


async def _close_events(events: AsyncGenerator[StreamEvent, None]) -> None:
    with contextlib.suppress(RuntimeError):  # still running: the cancellation under way ends it
        await events.aclose()
