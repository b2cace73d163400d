"""The seam where the operator gets its Admin API client: `default_connector` is what it runs with.

Tests hand the driver other RolloutAdmins (an in-memory one); production code changes the transport
here and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from epochserve.controlplane.admin.client import AdminClient
from epochserve.operators.rollouts.admin import AdminConnector, AdminTarget, RolloutAdmin
from epochserve.operators.rollouts.grpc_admin import GrpcRolloutAdmin


class GrpcConnector:
    """An AdminConnector that opens one gRPC channel per session and closes it with the session.

    Plaintext: the coordinators the operator deploys serve the Admin API without TLS, on the
    cluster network behind their Service, and authenticate every call by the bearer token.
    Opening a session never fails; an unreachable address surfaces on the first call as
    AdminUnavailableError.
    """

    def __init__(self, call_timeout_s: float = 30.0, watch_timeout_s: float = 3600.0) -> None:
        self.call_timeout_s = call_timeout_s
        self.watch_timeout_s = watch_timeout_s

    def connect(self, target: AdminTarget) -> AbstractAsyncContextManager[RolloutAdmin]:
        return self._session(target)

    @asynccontextmanager
    async def _session(self, target: AdminTarget) -> AsyncIterator[RolloutAdmin]:
        async with AdminClient(target.address, target.token) as client:
            yield GrpcRolloutAdmin(client, self.call_timeout_s, self.watch_timeout_s)


def default_connector() -> AdminConnector:
    """The connector `python -m epochserve.operators` uses."""
    return GrpcConnector()
