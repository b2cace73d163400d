"""Python client of the Generation service (a router): blocking and asyncio.

    with GenerationClient("127.0.0.1:50050") as client:
        result = client.generate([1, 17, 33], SamplingParams(temperature=1.0, max_tokens=64), n=8)
        result.policy_version                     # one version for all 8 samples (I1)
        result.samples[0].token_ids, result.samples[0].processed_logprobs

    async with AsyncGenerationClient("127.0.0.1:50050") as client:
        async for event in client.stream(prompt, sampling):   # TokenChunk ... SampleFinished
            ...

Results are typed (proto/results.py); failures raise a GenerationError subclass carrying the
gRPC status (client/errors.py), e.g. ResourceExhaustedError with `retry_after_seconds`.
A response is checked on arrival: two policy versions in one response raise MixedVersionError.

Calls wait for the router to be reachable (wait_for_ready) within their timeout, so a router
restarting on the same address is picked up again. Each call carries a request id (generated
when not given) that `abort` and the error messages use.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

import grpc

from epochserve.channels import CLIENT_CHANNEL_OPTIONS, ClientTls, aio_channel, sync_channel
from epochserve.client.errors import error_from_rpc
from epochserve.proto.convert import sampling_to_proto
from epochserve.proto.results import GenerateResult, ResponseAssembler, StreamEvent
from epochserve.proto.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from epochserve.sampling import SamplingParams

DEFAULT_TIMEOUT_SECONDS = 600.0
Prompt = Sequence[int] | str  # token ids, or text the worker tokenizes


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """GetPolicy: the version a router pins new requests to, and whether its rollout is DONE."""

    policy_version: int
    rollout_done: bool
    num_workers_serving: int
    num_workers: int
    router_id: str
    model_path: str  # the workers' model directory (on their machines); "" until one answered


def build_request(
    prompt: Prompt,
    sampling: SamplingParams | None = None,
    *,
    n: int = 1,
    min_policy_version: int | None = None,
    request_id: str = "",
) -> common_pb2.GenerateRequest:
    """A GenerateRequest; a fresh request id when none is given."""
    request = common_pb2.GenerateRequest(
        request_id=request_id or uuid.uuid4().hex,
        sampling=sampling_to_proto(sampling or SamplingParams()),
        n=n,
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
    )


class GenerationClient:
    """Blocking client; thread-safe (one channel, any number of concurrent calls)."""

    def __init__(
        self,
        target: str,
        *,
        tls: ClientTls | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_SECONDS,
        wait_for_ready: bool = True,
    ) -> None:
        self.target = target
        self.timeout = timeout  # default deadline of a call, seconds (None: none)
        self.wait_for_ready = wait_for_ready
        self._channel = sync_channel(target, CLIENT_CHANNEL_OPTIONS, tls)
        self._stub = generation_pb2_grpc.GenerationStub(self._channel)

    def __enter__(self) -> GenerationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(
        self,
        prompt: Prompt,
        sampling: SamplingParams | None = None,
        *,
        n: int = 1,
        min_policy_version: int | None = None,
        request_id: str = "",
        timeout: float | None = None,
    ) -> GenerateResult:
        """Run a request to completion. Raises a GenerationError subclass."""
        request = build_request(
            prompt, sampling, n=n, min_policy_version=min_policy_version, request_id=request_id
        )
        return self.send(request, timeout)

    def send(self, request: common_pb2.GenerateRequest, timeout: float | None = None) -> GenerateResult:
        """Run a ready-made GenerateRequest to completion (a copy gets a request id if it has none)."""
        request = _with_request_id(request)
        started = time.monotonic()
        assembler = ResponseAssembler()
        for _ in self._events(request, timeout, assembler):
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
    ) -> Iterator[StreamEvent]:
        """Events as they arrive (TokenChunk, SampleFinished). Stopping early cancels the request."""
        request = build_request(
            prompt, sampling, n=n, min_policy_version=min_policy_version, request_id=request_id
        )
        return self._events(request, timeout, ResponseAssembler())

    def abort(self, request_id: str, timeout: float = 10.0) -> bool:
        """Abort a request in flight at this router; False when it knows no such request."""
        try:
            response = self._stub.Abort(common_pb2.AbortRequest(request_id=request_id), timeout=timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, request_id) from None
        return bool(response.found)

    def get_policy(self, timeout: float = 10.0, wait_for_ready: bool | None = None) -> PolicyInfo:
        """wait_for_ready: None takes the client's; False fails at once when nothing listens."""
        wait = self.wait_for_ready if wait_for_ready is None else wait_for_ready
        try:
            response = self._stub.GetPolicy(
                generation_pb2.GetPolicyRequest(), timeout=timeout, wait_for_ready=wait
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return _policy_info(response)

    def _events(
        self, request: common_pb2.GenerateRequest, timeout: float | None, assembler: ResponseAssembler
    ) -> Iterator[StreamEvent]:
        call = self._stub.Generate(
            request,
            timeout=timeout if timeout is not None else self.timeout,
            wait_for_ready=self.wait_for_ready,
        )
        try:
            for response in call:
                yield assembler.add(response)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, request.request_id) from None
        finally:
            call.cancel()  # a no-op after the end; frees the request when the caller stopped early


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
    ) -> GenerateResult:
        """Run a request to completion. Raises a GenerationError subclass."""
        request = build_request(
            prompt, sampling, n=n, min_policy_version=min_policy_version, request_id=request_id
        )
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
    ) -> AsyncIterator[StreamEvent]:
        """Events as they arrive (TokenChunk, SampleFinished). Stopping early cancels the request."""
        request = build_request(
            prompt, sampling, n=n, min_policy_version=min_policy_version, request_id=request_id
        )
        return self._events(request, timeout, ResponseAssembler())

    async def abort(self, request_id: str, timeout: float = 10.0) -> bool:
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
    ) -> AsyncIterator[StreamEvent]:
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
