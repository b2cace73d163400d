"""What the HTTP front needs of the router: run a GenerateRequest down the gRPC front's own path
(RequestFlow), abort one, and what it reports (version, limits). RouterBackend is the router's own,
in its process; GrpcBackend (grpc_backend.py) the one of an HTTP front process of its own, over
gRPC. Tests substitute a scripted one."""

from __future__ import annotations

from typing import Protocol

from epochserve.proto.v1 import common_pb2
from epochserve.router.aborting import abort_request
from epochserve.router.attempt import Send
from epochserve.router.core import RouterCore
from epochserve.router.errors import RouterShuttingDownError
from epochserve.router.flow import RequestFlow
from epochserve.router.waiting import Deadline
from epochserve.sampling import ModelLimits


class Backend(Protocol):
    @property
    def version(self) -> int | None: ...

    @property
    def limits(self) -> ModelLimits | None: ...

    @property
    def is_serving(self) -> bool: ...

    async def generate(
        self, request: common_pb2.GenerateRequest, deadline: Deadline, write: Send
    ) -> None: ...

    async def abort(self, request_id: str) -> bool: ...

    async def refresh(self) -> None:
        """Make `version` and `limits` current now (where the backend reads them periodically)."""


class RouterBackend:
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    @property
    def version(self) -> int | None:
        return self.core.admission.version

    @property
    def limits(self) -> ModelLimits | None:
        return self.core.registry.limits

    @property
    def is_serving(self) -> bool:
        return self.core.is_accepting and self.core.admission.version is not None

    async def generate(self, request: common_pb2.GenerateRequest, deadline: Deadline, write: Send) -> None:
        """As GenerationService.Generate: write each message, raise what the request ends with."""
        if not self.core.is_accepting:
            raise RouterShuttingDownError(f"request {request.request_id}: the router is shutting down")
        await RequestFlow(self.core, request, deadline, write).run()

    async def abort(self, request_id: str) -> bool:
        return await abort_request(self.core, request_id)

    async def refresh(self) -> None:
        pass  # read live from the router's own state
