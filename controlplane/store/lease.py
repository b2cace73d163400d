"""Lease: an etcd lease kept alive in the background, with a "lost" signal (the pattern of etcd's
client/v3/concurrency Session; here "session" names only a router's stream to a worker).

Keys written with the lease live exactly as long as it does. The lease counts as
lost, for good, as soon as the lease is gone *or might be*:
- etcd answers a keepalive with TTL 0 (the lease expired or was revoked);
- no keepalive was acknowledged for a whole TTL (etcd unreachable, or this process was paused):
  the server may have expired the lease already, so acting as its holder would be unsafe;
- `close()` was called.
`is_lost` also turns true by itself once the local deadline passes, before the keepalive task runs
again — after a SIGSTOP the first code to run must not believe it still holds the lease.
A lost lease never comes back: open a new one (and re-register / re-campaign with it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

from epochserve.aio import Interrupted, cancel_on
from epochserve.controlplane.store.client import EtcdStore
from epochserve.errors import ControlPlaneError, LeaseLostError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Lease:
    """One lease and its keepalive task. Create with `await Lease.open(store, ttl)`."""

    def __init__(self, store: EtcdStore, lease_id: int, ttl: int, deadline: float) -> None:
        self._store = store
        self.lease_id = lease_id
        self.ttl = ttl
        self._deadline = deadline  # time.monotonic() past which the lease may have expired
        self._lost = asyncio.Event()
        self.lost_reason = ""
        self._task = asyncio.create_task(self._keepalive(), name=f"keepalive-{lease_id:x}")

    @classmethod
    async def open(cls, store: EtcdStore, ttl: int) -> Lease:
        """Grant a lease of `ttl` seconds (etcd may round it up) and start keeping it alive.
        Raises StoreUnavailableError when etcd cannot be reached."""
        if ttl < 1:
            raise ValueError("lease ttl: must be at least 1 second")
        asked_at = time.monotonic()  # the lease's clock starts no earlier than this
        lease_id = await store.grant_lease(ttl)
        log.debug("lease %x opened (ttl %ss)", lease_id, ttl)
        return cls(store, lease_id, ttl, asked_at + ttl)

    @property
    def is_lost(self) -> bool:
        if not self._lost.is_set() and time.monotonic() >= self._deadline:
            self._mark_lost("no keepalive acknowledged within the lease TTL")
        return self._lost.is_set()

    def check(self) -> None:
        """Raise LeaseLostError when the lease is lost (see module docstring)."""
        if self.is_lost:
            raise LeaseLostError(f"lease {self.lease_id:x} lost: {self.lost_reason}")

    async def wait_lost(self) -> str:
        """Wait until the lease is lost; returns why."""
        while not self.is_lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), max(0.0, self._deadline - time.monotonic()))
        return self.lost_reason

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable` while the lease lives: when the lease is lost first, cancel it and
        raise LeaseLostError."""
        try:
            return await cancel_on(awaitable, self.wait_lost())
        except Interrupted:
            raise LeaseLostError(f"lease {self.lease_id:x} lost: {self.lost_reason}") from None

    async def close(self, revoke: bool = True) -> None:
        """Stop the keepalive and (by default) revoke the lease, deleting its keys at once rather than
        a TTL later. Revoking is best effort: an unreachable etcd lets the lease expire instead."""
        self._mark_lost("closed")
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if revoke:
            with contextlib.suppress(ControlPlaneError):
                await self._store.revoke_lease(self.lease_id)

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self.lost_reason = reason
            self._lost.set()
            if reason != "closed":
                log.warning("lease %x lost: %s", self.lease_id, reason)

    async def _keepalive(self) -> None:
        interval = self.ttl / 3
        retry = min(interval, 0.25)
        pause = interval
        while not self.is_lost:
            await asyncio.sleep(max(0.0, min(pause, self._deadline - time.monotonic())))
            sent = time.monotonic()
            if self.is_lost:
                return
            try:
                remaining = await asyncio.wait_for(
                    self._store.refresh_lease(self.lease_id), self._deadline - sent
                )
            except (ControlPlaneError, TimeoutError) as e:  # unreachable or refused: retry until the deadline
                log.debug("lease %x keepalive failed: %s", self.lease_id, e)
                pause = retry
                continue
            if remaining <= 0:
                self._mark_lost("the lease expired or was revoked")
                return
            self._deadline = sent + remaining
            pause = interval
