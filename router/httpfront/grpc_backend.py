"""GrpcBackend: the Backend of an HTTP front process of its own (--http-processes N > 1), a gRPC
client of its router's Generation service.

A request runs as one Generate call, so it takes the router's whole path (validation, admission,
balancing, retries, metrics, audit) as a gRPC client's does; its failure comes back as the
exception the in-process path raises (rpc_errors.py), so the HTTP answer is the same. What the
front reads between requests (the version, the model limits, whether the router admits requests)
comes from GetPolicy, polled every POLL_SECONDS: at most that stale, which only /health,
/v1/models and a default max_tokens see (requests are validated by the router itself);
`refresh()` reads it now, for answers that must be exact (the version after a rollout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from epochserve.channels import CLIENT_CHANNEL_OPTIONS, aio_channel
from epochserve.proto.convert import limits_from_policy
from epochserve.proto.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from epochserve.router.attempt import Send
from epochserve.router.httpfront.rpc_errors import error_of
from epochserve.router.waiting import Deadline
from epochserve.sampling import ModelLimits

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # GetPolicy period: how stale the version and limits may be
POLICY_TIMEOUT_SECONDS = 2.0  # one GetPolicy; a router that does not answer is not serving
ABORT_TIMEOUT_SECONDS = 5.0


class GrpcBackend:
    """Use from one event loop: `await start()` first, `await close()` last."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = aio_channel(target, CLIENT_CHANNEL_OPTIONS)
        self._stub = generation_pb2_grpc.GenerationStub(self._channel)
        self._policy: generation_pb2.GetPolicyResponse | None = None
        self._limits: ModelLimits | None = None
        self._is_reachable = False
        self._poller: asyncio.Task[None] | None = None

    @property
    def version(self) -> int | None:
        return None if self._policy is None else self._policy.policy_version

    @property
    def limits(self) -> ModelLimits | None:
        return self._limits

    @property
    def is_serving(self) -> bool:
        return self._is_reachable and self._policy is not None and not self._policy.stopping

    async def start(self, timeout: float) -> None:
        """Read the policy once (waiting up to `timeout` for the router to answer), then keep it
        fresh in the background. Raises grpc.aio.AioRpcError when the router does not answer."""
        await self._read_policy(timeout, wait_for_ready=True)
        self._poller = asyncio.create_task(self._poll())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self._channel.close()

    async def refresh(self) -> None:
        """Read the policy now (a failure leaves it as it was and marks the router unreachable)."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._read_policy(POLICY_TIMEOUT_SECONDS)

    async def generate(self, request: common_pb2.GenerateRequest, deadline: Deadline, write: Send) -> None:
        """As RouterBackend.generate: write each message, raise what the request ends with."""
        call = self._stub.Generate(request, timeout=deadline.remaining())
        try:
            while (message := await call.read()) is not grpc.aio.EOF:
                await write(message)
        except grpc.aio.AioRpcError as exc:
            raise error_of(exc) from None
        finally:
            call.cancel()  # a no-op once the call ended; else (the client left) the router stops it

    async def abort(self, request_id: str) -> bool:
        try:
            response = await self._stub.Abort(
                common_pb2.AbortRequest(request_id=request_id), timeout=ABORT_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:  # the request then runs to its end: nothing is lost
            logger.warning("abort of request %s failed: %s %s", request_id, exc.code().name, exc.details())
            return False
        return bool(response.found)

    async def _read_policy(self, timeout: float, wait_for_ready: bool = False) -> None:
        try:
            policy = await self._stub.GetPolicy(
                generation_pb2.GetPolicyRequest(), timeout=timeout, wait_for_ready=wait_for_ready
            )
        except grpc.aio.AioRpcError as exc:
            if self._is_reachable:
                logger.warning("router at %s: GetPolicy failed (%s)", self.target, exc.code().name)
            self._is_reachable = False
            raise
        if not self._is_reachable and self._policy is not None:
            logger.info("router at %s answers again", self.target)
        self._policy, self._limits, self._is_reachable = policy, limits_from_policy(policy), True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self.refresh()
