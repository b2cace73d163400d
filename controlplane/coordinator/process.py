"""Coordinator: one `epochctl coordinator` process — Admin server, election, rollout driver.

Every replica serves Admin (reads from etcd; StartRollout/AbortRollout forwarded to the leader) and
campaigns. The one that leads runs the RolloutDriver for as long as its lease lives. Terms:

    open a lease → campaign → lead (drive rollouts) → lease lost or lead lost → step down
                                                                                   → next term

Stepping down revokes the lease, which deletes the candidate key at once, so a standby
takes over without waiting out the TTL; a killed leader is replaced one TTL after its death.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from epochserve.aio import Interrupted, cancel_on
from epochserve.controlplane.coordinator.config import CoordinatorConfig
from epochserve.controlplane.coordinator.driver import RolloutDriver
from epochserve.controlplane.coordinator.requests import StartRequest
from epochserve.controlplane.coordinator.writer import RolloutWriter, Timeouts
from epochserve.controlplane.store.client import EtcdStore
from epochserve.controlplane.store.election import Election, Leadership
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.lease import Lease
from epochserve.controlplane.store.records import CandidateRecord, RolloutRecord
from epochserve.controlplane.store.state import ClusterState, read_state
from epochserve.controlplane.store.watch import ClusterWatch
from epochserve.errors import ControlPlaneError, LeaseLostError, NotLeaderError

log = logging.getLogger(__name__)
T = TypeVar("T")
_RETRY_PAUSE = 0.5  # seconds between attempts to open a lease while etcd is down


class Coordinator:
    """State shared by the Admin service and the election loop of one process."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.keyspace = Keyspace(config.cluster)
        self.store = EtcdStore(config.etcd)
        self.watch = ClusterWatch(self.store, self.keyspace)
        self._writer = RolloutWriter(
            self.store,
            self.keyspace,
            config.coordinator_id,
            Timeouts(config.stage_timeout, config.commit_timeout),
        )
        self._leadership: Leadership | None = None
        self._admin_lock = asyncio.Lock()  # one StartRollout/AbortRollout at a time on the leader

    @property
    def is_leader(self) -> bool:
        lead = self._leadership
        return lead is not None and not lead.lease.is_lost

    def leader_address(self) -> str | None:
        """The leader's Admin address as last seen in etcd; None while nobody leads."""
        if self.is_leader:
            return self.config.admin_address
        state = self.watch.state
        leader = state.leader if state else None
        return leader.value.admin_address if leader else None

    async def read_state(self) -> ClusterState:
        """A fresh, consistent read of the cluster (Admin reads use it: read-your-writes)."""
        return await read_state(self.store, self.keyspace)

    async def start_rollout(self, request: StartRequest) -> RolloutRecord:
        """Leader only (NotLeaderError otherwise, with the leader's address)."""
        async with self._admin_lock:
            return await self._writer.start(self._require_lead(), request)

    async def abort_rollout(self, version: int, reason: str) -> RolloutRecord:
        """Leader only; aborts a STAGING rollout (see RolloutWriter.abort)."""
        async with self._admin_lock:
            return await self._writer.abort(self._require_lead(), version, reason)

    def _require_lead(self) -> Leadership:
        lead = self._leadership
        if lead is None or lead.lease.is_lost:
            raise NotLeaderError("this coordinator does not lead", self.leader_address())
        return lead

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign and lead, term after term, until `stop` is set (Admin runs alongside)."""
        await self.store.connect()
        self.watch.start()
        try:
            while not stop.is_set():
                try:
                    lease = await Lease.open(self.store, self.config.lease_ttl)
                except ControlPlaneError as e:  # etcd unreachable or refusing: try again
                    log.warning("cannot open a lease: %s", e)
                    await _until(asyncio.sleep(_RETRY_PAUSE), stop)
                    continue
                try:
                    await self._term(lease, stop)
                finally:
                    self._leadership = None
                    await lease.close(revoke=True)
        finally:
            await self.watch.stop()
            await self.store.close()

    async def _term(self, lease: Lease, stop: asyncio.Event) -> None:
        me = CandidateRecord(self.config.coordinator_id, self.config.admin_address)
        election = Election(self.store, self.keyspace, lease, me)
        try:
            lead = await _until(election.campaign(), stop)
            if lead is None:
                return
            self._leadership = lead
            log.info("coordinator %s leads cluster %s", me.coordinator_id, self.keyspace.cluster)
            driver = RolloutDriver(self.watch, self._writer, lead)
            await _until(lease.run(driver.run()), stop)
        except (LeaseLostError, NotLeaderError) as e:
            log.warning("coordinator %s steps down: %s", me.coordinator_id, e)


async def _until(awaitable: Awaitable[T], stop: asyncio.Event) -> T | None:
    """Await `awaitable` unless `stop` is set first (then cancel it and return None)."""
    try:
        return await cancel_on(awaitable, stop.wait())
    except Interrupted:
        return None
