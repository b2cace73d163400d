"""Abort a request in flight at this router: the gRPC Abort call, and the HTTP front once every
sample of a request matched a stop string."""

from __future__ import annotations

import logging

import grpc

from epochserve.proto.v1 import common_pb2
from epochserve.router.core import RouterCore

logger = logging.getLogger(__name__)

ABORT_TIMEOUT_SECONDS = 5.0


async def abort_request(core: RouterCore, request_id: str) -> bool:
    """True for a request in flight at this router. A waiting request ends ABORTED; a running one
    is aborted on its worker (its samples finish with ABORT). Failure mode: an Abort that reaches
    the worker in the millisecond before the request itself finds nothing there, and the request
    runs on; a client may cancel its call instead, which always holds."""
    state = core.inflight.get(request_id)
    if state is None:
        return False
    state.is_abort_requested = True
    core.admission.changes.notify()  # a waiting request sees the flag at once
    if state.handle is not None:
        try:
            await state.handle.stub.Abort(
                common_pb2.AbortRequest(request_id=request_id), timeout=ABORT_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:  # the flow still ends: its worker call fails too
            logger.info("abort of %s on %s: %s", request_id, state.handle.worker_id, exc.code().name)
    return True
