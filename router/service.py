"""The Generation gRPC service (router, public): Generate, Abort, GetPolicy.

This is the router's server edge: every error a call ends with becomes a gRPC status here, through
proto/status.py's one table and abort helper (`abort_with`). Epochserve errors map through the
table (with the queue-full retry hint as trailing metadata); a worker's own status (INVALID_ARGUMENT
for a text prompt, INTERNAL from a runtime guard, ...) reaches the client unchanged, prefixed with
the request id; anything unexpected is INTERNAL and logged with its traceback.
"""

from __future__ import annotations

import logging

import grpc

from epochserve.errors import UnavailableError
from epochserve.proto.convert import limits_to_proto
from epochserve.proto.status import abort_with
from epochserve.proto.v1 import common_pb2, generation_pb2, generation_pb2_grpc
from epochserve.router.aborting import abort_request
from epochserve.router.core import RouterCore
from epochserve.router.errors import RouterShuttingDownError
from epochserve.router.flow import RequestFlow
from epochserve.router.waiting import Deadline

logger = logging.getLogger(__name__)


class GenerationService(generation_pb2_grpc.GenerationServicer):
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    async def Generate(self, request: common_pb2.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        """Server streaming through context.write (router/attempt.py says why not a generator)."""
        if not self.core.is_accepting:
            named = request.request_id or "(no id)"
            stopping = RouterShuttingDownError(f"request {named}: the router is shutting down")
            await abort_with(context, stopping, request_id=request.request_id)
        flow = RequestFlow(self.core, request, Deadline.after(context.time_remaining()), context.write)
        try:
            await flow.run()
        except Exception as exc:  # CancelledError (client gone) is a BaseException: not caught
            await abort_with(context, exc, request_id=flow.state.request_id)

    async def Abort(
        self, request: common_pb2.AbortRequest, context: grpc.aio.ServicerContext
    ) -> common_pb2.AbortResponse:
        """found=True for a request in flight at this router (router/aborting.py says what follows)."""
        found = await abort_request(self.core, request.request_id)
        if found:
            logger.info("request %s aborted by the client", request.request_id)
        return common_pb2.AbortResponse(request_id=request.request_id, found=found)

    async def GetPolicy(
        self, request: generation_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext
    ) -> generation_pb2.GetPolicyResponse:
        version = self.core.admission.version
        if version is None:
            await abort_with(context, UnavailableError("the router has not read the committed version yet"))
        view = self.core.registry.view
        return generation_pb2.GetPolicyResponse(
            policy_version=version,
            rollout_done=view.committed_epoch == version and view.is_committed_done,
            num_workers_serving=len(view.serving(version)),
            num_workers=len(view.workers),
            router_id=self.core.router_id,
            model_path=self.core.registry.model_path,
            limits=limits_to_proto(self.core.registry.limits),
            stopping=not self.core.is_accepting,
        )
