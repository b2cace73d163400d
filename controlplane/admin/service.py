"""AdminService: the Admin servicer (proto/v1/admin.proto) of one coordinator replica.

Reads (GetRollout, WatchRollout, ListRollouts, ListWorkers) are answered by any replica from etcd:
a fresh read for unary calls (read-your-writes after StartRollout), the cluster watch for streams.
StartRollout and AbortRollout run on the leader; a follower forwards them there with the caller's
credentials, once (a forwarded call that lands on a non-leader is refused with UNAVAILABLE rather
than forwarded again, so an election in progress cannot make calls bounce).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from epochserve.controlplane.admin import convert
from epochserve.controlplane.admin.client import open_channel
from epochserve.controlplane.admin.status import stream_errors, unary_errors
from epochserve.controlplane.coordinator.process import Coordinator
from epochserve.errors import NotLeaderError
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.proto.v1 import admin_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
FORWARDED_BY = "x-epochserve-forwarded-by"  # metadata naming the follower that forwarded a call
_TERMINAL = (pb.ROLLOUT_PHASE_DONE, pb.ROLLOUT_PHASE_ABORTED)
_DEFAULT_FORWARD_TIMEOUT = 30.0  # seconds, when the caller set no deadline


class AdminService(pb_grpc.AdminServicer):
    """See the module docstring."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    @unary_errors
    async def StartRollout(
        self, request: pb.StartRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartRolloutResponse:
        start = convert.start_request(request)
        try:
            record = await self._coordinator.start_rollout(start)
        except NotLeaderError as e:
            forwarded: pb.StartRolloutResponse = await self._forward("StartRollout", request, context, e)
            return forwarded
        log.info("request %s: started rollout v%d", request.request_id, record.version)
        return pb.StartRolloutResponse(request_id=request.request_id, rollout=convert.rollout(record))

    @unary_errors
    async def AbortRollout(
        self, request: pb.AbortRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.AbortRolloutResponse:
        reason = request.reason or "aborted by an operator"
        try:
            record = await self._coordinator.abort_rollout(request.version, reason)
        except NotLeaderError as e:
            forwarded: pb.AbortRolloutResponse = await self._forward("AbortRollout", request, context, e)
            return forwarded
        log.info("request %s: rollout v%d is %s", request.request_id, record.version, record.phase)
        return pb.AbortRolloutResponse(request_id=request.request_id, rollout=convert.rollout(record))

    @unary_errors
    async def GetRollout(
        self, request: pb.GetRolloutRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRolloutResponse:
        state = await self._coordinator.read_state()
        return pb.GetRolloutResponse(
            request_id=request.request_id, status=convert.rollout_status(state, request.version)
        )

    @stream_errors
    async def WatchRollout(
        self, request: pb.WatchRolloutRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchRolloutResponse]:
        state = await self._coordinator.read_state()
        status = convert.rollout_status(state, request.version)
        yield pb.WatchRolloutResponse(request_id=request.request_id, status=status)
        while status.rollout.phase not in _TERMINAL:
            newer = await self._coordinator.watch.next_state(state.revision, None)
            if newer is None:
                continue
            state, previous = newer, status
            status = convert.rollout_status(state, request.version)
            if _progress(status) != _progress(previous):
                yield pb.WatchRolloutResponse(request_id=request.request_id, status=status)

    @unary_errors
    async def ListRollouts(
        self, request: pb.ListRolloutsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRolloutsResponse:
        state = await self._coordinator.read_state()
        records = [r.value for r in reversed(state.rollouts.values())]
        if request.limit:
            records = records[: request.limit]
        return pb.ListRolloutsResponse(
            request_id=request.request_id,
            rollouts=[convert.rollout(r) for r in records],
            committed_epoch=state.committed_version,
        )

    @unary_errors
    async def ListWorkers(
        self, request: pb.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWorkersResponse:
        state = await self._coordinator.read_state()
        leader = state.leader
        return pb.ListWorkersResponse(
            request_id=request.request_id,
            committed_epoch=state.committed_version,
            workers=[convert.worker(w.value) for _, w in sorted(state.workers.items())],
            routers=[convert.router(r.value) for _, r in sorted(state.routers.items())],
            leader_id=leader.value.coordinator_id if leader else "",
            leader_address=leader.value.admin_address if leader else "",
        )

    async def _forward(
        self, method: str, request: Any, context: grpc.aio.ServicerContext, error: NotLeaderError
    ) -> Any:
        """Send a leader-only call to the leader; re-raise `error` when there is none to send it to."""
        metadata = {k: v for k, v in context.invocation_metadata() or ()}
        own = self._coordinator.config.admin_address
        if error.leader_address in (None, own) or FORWARDED_BY in metadata:
            raise error
        cfg = self._coordinator.config
        log.info("forwarding %s to the leader at %s", method, error.leader_address)
        remaining = context.time_remaining()
        async with open_channel(
            error.leader_address, tls=cfg.uses_tls, ca_file=cfg.forwarding_ca_file
        ) as channel:
            call = getattr(pb_grpc.AdminStub(channel), method)
            return await call(
                request,
                metadata=(("authorization", str(metadata.get("authorization", ""))), (FORWARDED_BY, own)),
                timeout=remaining if remaining is not None else _DEFAULT_FORWARD_TIMEOUT,
            )


def _progress(status: pb.RolloutStatus) -> bytes:
    """A status without its revision: two equal ones tell a watcher nothing new."""
    copy = pb.RolloutStatus()
    copy.CopyFrom(status)
    copy.revision = 0
    return copy.SerializeToString(deterministic=True)
