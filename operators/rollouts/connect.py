"""The seam where the operator gets its Admin API client.

`default_connector` is what the operator runs with. Until the Admin gRPC API exists (issue 5) it
returns `UnwiredConnector`, whose sessions fail with AdminNotWiredError: PolicyRollouts stay
Pending and are retried, deleting one is not blocked (nothing can have started), and EpochCluster
reconcile is unaffected. The gRPC-backed connector replaces
it here and nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from epochserve.operators.rollouts.admin import (
    AdminConnector,
    AdminTarget,
    AdminUnavailableError,
    RolloutAdmin,
)


class AdminNotWiredError(AdminUnavailableError):
    """This build has no Admin API transport, so no rollout can have been started through it."""


class UnwiredConnector:
    """An AdminConnector with no transport yet: every session raises AdminUnavailableError."""

    def connect(self, target: AdminTarget) -> AbstractAsyncContextManager[RolloutAdmin]:
        return self._refuse(target)

    @asynccontextmanager
    async def _refuse(self, target: AdminTarget) -> AsyncIterator[RolloutAdmin]:
        raise AdminNotWiredError(f"no Admin API client is wired into this operator build ({target.address})")
        yield  # pragma: no cover  (makes this an async generator)


def default_connector() -> AdminConnector:
    """The connector `python -m epochserve.operators` uses."""
    return UnwiredConnector()
