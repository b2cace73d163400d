"""The Worker gRPC service (rank 0): Generate, Session, Abort, GetWorkerInfo over an EngineLoop.

Error mapping happens here, at the edge, through proto/status.py's one table and abort helper (a
Session stream sends the same Failure as a message). A request that fails validation gets
INVALID_ARGUMENT naming the field; a runtime guard (non-finite logits) fails only
its own request with INTERNAL; client cancel or deadline aborts the request in the engine, which
frees its sequences and blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import NoReturn

import grpc

from epochserve.errors import EpochserveError, RuntimeGuardError, UnavailableError
from epochserve.proto.convert import ParsedGenerateRequest, parse_generate_request
from epochserve.proto.status import Failure, abort, abort_with, failure_of, status_of
from epochserve.proto.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from epochserve.worker.engine.engine import Engine
from epochserve.worker.engine.outputs import SequenceOutput
from epochserve.worker.engine.sequence import FinishReason
from epochserve.worker.serving.engine_loop import EngineLoop, EngineStoppedError
from epochserve.worker.serving.mailbox import Mailbox
from epochserve.worker.serving.responses import ResponseBuilder, WorkerStamp
from epochserve.worker.serving.session import RequestFailed, serve_grpc

logger = logging.getLogger(__name__)

# How often a waiting Generate call checks that the engine loop is still alive.
LIVENESS_CHECK_SECONDS = 1.0


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(
        self,
        loop: EngineLoop,
        identity: WorkerStamp,
        tokenize: Callable[[str], list[int]] | None = None,
        model_path: str = "",
    ) -> None:
        self.loop = loop
        self.identity = identity
        self.tokenize = tokenize
        self.model_path = model_path
        self.accepting = True  # False once shutdown began: new requests get UNAVAILABLE
        # With a control plane: False while fenced or catching up (new requests get UNAVAILABLE).
        self.is_ready: Callable[[], bool] = lambda: True
        self.session_port = 0  # the session link's port, reported in GetWorkerInfo (0: none)
        self._outputs_mailbox: Mailbox | None = None

    async def Generate(
        self, request: common_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.GenerateResponse]:
        try:
            parsed = self.admit(request)
            reason = lambda: (  # noqa: E731
                "client cancelled or deadline exceeded" if context.cancelled() else "request failed"
            )
            async with contextlib.aclosing(self.responses(parsed, reason)) as responses:
                async for response in responses:
                    yield response
        except RequestFailed as exc:
            await abort(context, exc.failure)

    async def Session(
        self,
        request_iterator: AsyncIterator[worker_pb2.SessionRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await serve_grpc(self, context)

    def admit(self, request: common_pb2.GenerateRequest) -> ParsedGenerateRequest:
        """The request, validated; raises RequestFailed (UNAVAILABLE, INVALID_ARGUMENT) instead."""
        if not self.accepting:
            raise RequestFailed(failure_of(UnavailableError("worker is shutting down")))
        if not self.is_ready():
            raise RequestFailed(failure_of(UnavailableError("worker is not ready (catching up or fenced)")))
        try:
            parsed = parse_generate_request(request, self.loop.engine.limits, self.tokenize)
            self.loop.engine.check_supported(parsed)  # e.g. routed experts of a dense model
            return parsed
        except EpochserveError as exc:
            raise RequestFailed(failure_of(exc)) from exc

    async def responses(
        self, parsed: ParsedGenerateRequest, abort_reason: Callable[[], str]
    ) -> AsyncGenerator[common_pb2.GenerateResponse, None]:
        """Run the request; yield its responses (in its output mode) until every sample finished.
        Raises RequestFailed when it fails (engine stopped, runtime guard). Closed early (cancelled,
        deadline, the consumer gone), it aborts the request in the engine with `abort_reason()`,
        which frees the sequences and their blocks. Use under contextlib.aclosing."""
        outputs: asyncio.Queue[SequenceOutput | BaseException] = asyncio.Queue()
        mailbox = self._mailbox()

        def sink(item: SequenceOutput | BaseException) -> None:  # runs on the engine thread
            mailbox.put(outputs, item)

        try:
            self.loop.submit(parsed, sink)
        except EngineStoppedError as exc:
            raise RequestFailed(failure_of(exc)) from exc
        num_unfinished = parsed.n
        builder = ResponseBuilder(self.identity, parsed.output_mode)
        try:
            while num_unfinished:
                batch = await self._next_outputs(outputs)
                error = next((item for item in batch if isinstance(item, BaseException)), None)
                if error is not None:
                    self._fail(parsed, error)
                results = [item for item in batch if isinstance(item, SequenceOutput)]
                guard = next((o for o in results if o.finish and o.finish.reason is FinishReason.ERROR), None)
                if guard is not None and guard.finish is not None:
                    self._fail(parsed, RuntimeGuardError(parsed.request_id, guard.finish.error))
                for response in builder.responses(results):
                    yield response
                num_unfinished -= sum(1 for o in results if o.finish is not None)
        finally:
            if num_unfinished:  # cancelled, deadline, or failed: free the sequences and their blocks
                self.loop.abort(parsed.request_id, abort_reason())

    def _mailbox(self) -> Mailbox:
        """The mailbox of the running event loop (the server's; tests may run several loops)."""
        loop = asyncio.get_running_loop()
        if self._outputs_mailbox is None or self._outputs_mailbox.loop is not loop:
            self._outputs_mailbox = Mailbox(loop)
        return self._outputs_mailbox

    async def _next_outputs(
        self, outputs: asyncio.Queue[SequenceOutput | BaseException]
    ) -> list[SequenceOutput | BaseException]:
        """Wait for at least one output, then take everything already queued.

        asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation that lands as
        the queue yields (bpo-42130), and a request's deadline (a cancellation of its task, e.g. a
        Session's timeout) would then be lost while its engine steps keep the queue busy. It costs
        one timer per wait, where asyncio.wait on a get() costs a task too."""
        while True:
            try:
                async with asyncio.timeout(LIVENESS_CHECK_SECONDS):
                    first = await outputs.get()
                break
            except TimeoutError:
                if not self.loop.is_running:
                    return [EngineStoppedError("engine loop stopped")]
        batch = [first]
        while not outputs.empty():
            batch.append(outputs.get_nowait())
        return batch

    def _fail(self, parsed: ParsedGenerateRequest, exc: BaseException) -> NoReturn:
        logger.warning("request %s failed: %s", parsed.request_id, exc)
        raise RequestFailed(Failure(status_of(exc), f"request {parsed.request_id}: {exc}"))

    async def Abort(
        self, request: common_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.AbortResponse:
        try:
            found = await asyncio.wrap_future(self.loop.abort(request.request_id, "aborted by Abort call"))
        except EngineStoppedError as exc:
            await abort_with(context, exc)
        return common_pb2.AbortResponse(request_id=request.request_id, found=found)

    async def GetWorkerInfo(
        self, request: worker_pb2.GetWorkerInfoRequest, context: grpc.aio.ServicerContext
    ) -> worker_pb2.GetWorkerInfoResponse:
        try:
            return await asyncio.wrap_future(self.loop.call(self._info))
        except EngineStoppedError as exc:
            await abort_with(context, exc)

    def _info(self, engine: Engine) -> worker_pb2.GetWorkerInfoResponse:
        usage = engine.block_usage()
        mc = engine.model_config
        return worker_pb2.GetWorkerInfoResponse(
            worker_id=self.identity.worker_id,
            policy_version=engine.policy_version,
            architecture=mc.architecture,
            model_path=self.model_path,
            vocab_size=mc.vocab_size,
            max_model_len=engine.limits.max_model_len,
            tp_size=self.identity.tp_size,
            device=engine.config.torch_device.type,
            dtype=str(engine.config.torch_dtype).removeprefix("torch."),
            kernel_mode=self.identity.kernel_mode,
            kv_cache=worker_pb2.KvCacheUsage(
                block_size=usage.block_size,
                num_blocks_total=usage.num_total,
                num_blocks_free=usage.num_free,
                num_blocks_cached=usage.num_cached,
                prefix_cache_queries=usage.prefix_cache_queries,
                prefix_cache_hits=usage.prefix_cache_hits,
            ),
            num_running_seqs=engine.num_running,
            num_waiting_seqs=engine.num_waiting,
            num_preemptions=engine.num_preemptions,
            eos_token_ids=sorted(engine.eos_token_ids),
            max_n=engine.limits.max_n,
            session_port=self.session_port,
        )
