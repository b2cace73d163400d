"""AdminClient: the asyncio client of the Admin service (used by `epochctl` and by followers that
forward calls to the leader). Errors arrive as grpc.aio.AioRpcError with the server's status."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import grpc

from epochserve.controlplane.admin.auth import bearer_metadata
from epochserve.proto.status import REASON_KEY
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.proto.v1 import admin_pb2_grpc as pb_grpc
from epochserve.tls import channel_credentials


def open_channel(address: str, *, tls: bool, ca_file: Path | None) -> grpc.aio.Channel:
    """A channel to an Admin service: TLS when `tls` (trusting `ca_file`, or the system's roots)."""
    if tls or ca_file is not None:
        return grpc.aio.secure_channel(address, channel_credentials(ca_file))
    return grpc.aio.insecure_channel(address)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The server's `epochserve-reason` for a failed call, e.g. ROLLOUT_BUSY; "" when it gave none."""
    return next((str(v) for k, v in error.trailing_metadata() or () if k == REASON_KEY), "")


class AdminClient:
    """One channel to one coordinator. Use `async with AdminClient(...) as admin:`."""

    def __init__(self, address: str, token: str, *, tls: bool = False, ca_file: Path | None = None) -> None:
        self.address = address
        self._channel = open_channel(address, tls=tls, ca_file=ca_file)
        self._stub = pb_grpc.AdminStub(self._channel)
        self._metadata = bearer_metadata(token)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def start_rollout(self, request: pb.StartRolloutRequest, timeout: float) -> pb.Rollout:
        if not request.request_id:
            request.request_id = new_request_id()
        reply = await self._stub.StartRollout(request, metadata=self._metadata, timeout=timeout)
        return reply.rollout

    async def get_rollout(self, version: int, timeout: float) -> pb.RolloutStatus:
        request = pb.GetRolloutRequest(request_id=new_request_id(), version=version)
        reply = await self._stub.GetRollout(request, metadata=self._metadata, timeout=timeout)
        return reply.status

    async def watch_rollout(self, version: int, timeout: float) -> AsyncIterator[pb.RolloutStatus]:
        """Statuses until the rollout ends; DEADLINE_EXCEEDED after `timeout` seconds."""
        request = pb.WatchRolloutRequest(request_id=new_request_id(), version=version)
        call = self._stub.WatchRollout(request, metadata=self._metadata, timeout=timeout)
        try:
            async for reply in call:
                yield reply.status
        finally:
            call.cancel()

    async def abort_rollout(self, version: int, reason: str, timeout: float) -> pb.Rollout:
        request = pb.AbortRolloutRequest(request_id=new_request_id(), version=version, reason=reason)
        reply = await self._stub.AbortRollout(request, metadata=self._metadata, timeout=timeout)
        return reply.rollout

    async def list_rollouts(self, limit: int | None, timeout: float) -> pb.ListRolloutsResponse:
        request = pb.ListRolloutsRequest(request_id=new_request_id(), limit=limit)
        reply: pb.ListRolloutsResponse = await self._stub.ListRollouts(
            request, metadata=self._metadata, timeout=timeout
        )
        return reply

    async def list_workers(self, timeout: float) -> pb.ListWorkersResponse:
        request = pb.ListWorkersRequest(request_id=new_request_id())
        reply: pb.ListWorkersResponse = await self._stub.ListWorkers(
            request, metadata=self._metadata, timeout=timeout
        )
        return reply
