"""Leader election on a key prefix (the pattern of etcd's client/v3/concurrency Election).

Each candidate writes one key under the election prefix, bound to its lease; keys are
ordered by creation revision and the oldest one leads. A candidate waits only for the deletion of
its immediate predecessor (the next older key), so a leader's death wakes one candidate, not all.
Leadership lasts exactly as long as the candidate key exists, which is what `Leadership.guard()`
puts into every leader-only transaction: a leader that was paused past its TTL, or whose key was
deleted, cannot land a write even if it still believes it leads.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from epochserve.controlplane.store import codec
from epochserve.controlplane.store.client import EtcdStore, created_at, delete_op, put_op
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.lease import Lease
from epochserve.controlplane.store.records import CandidateRecord
from epochserve.controlplane.store.state import ClusterState
from epochserve.errors import LeaseLostError, StoreUnavailableError

log = logging.getLogger(__name__)
_RETRY_PAUSE = 0.2


@dataclass(frozen=True, slots=True)
class Leadership:
    """Proof of leading: the candidate key and the revision it was created at."""

    key: bytes
    create_revision: int
    lease: Lease

    def guard(self) -> Any:
        """The transaction guard "I am still the leader"."""
        return created_at(self.key, self.create_revision)

    def holds_in(self, state: ClusterState) -> bool:
        """Whether `state` still shows this leadership (the oldest candidate is this key)."""
        leader = state.leader
        return leader is not None and leader.create_revision == self.create_revision


class Election:
    """One candidate's campaign. `campaign()` returns once it leads; `resign()` steps down."""

    def __init__(
        self, store: EtcdStore, keyspace: Keyspace, lease: Lease, candidate: CandidateRecord
    ) -> None:
        self._store = store
        self._prefix = keyspace.election_prefix()
        self._key = keyspace.candidate(lease.lease_id)
        self._lease = lease
        self._value = codec.encode(candidate)

    async def campaign(self) -> Leadership:
        """Wait until this candidate leads. Raises LeaseLostError when the lease is lost first;
        an unreachable etcd is retried for as long as the lease lives."""
        while True:
            self._lease.check()
            try:
                return await self._lease.run(self._campaign_once())
            except StoreUnavailableError as e:
                log.info("campaign: etcd unavailable (%s); retrying", e)
                await asyncio.sleep(_RETRY_PAUSE)

    async def resign(self, leadership: Leadership) -> bool:
        """Delete the candidate key if it is still ours; False when it was already gone."""
        return await self._store.txn([leadership.guard()], [delete_op(leadership.key)])

    async def _campaign_once(self) -> Leadership:
        # Create-if-absent: re-campaigning with the same lease keeps its place in the queue.
        await self._store.txn(
            [created_at(self._key, 0)], [put_op(self._key, self._value, self._lease.lease_id)]
        )
        while True:
            revision, entries = await self._store.get_prefix(self._prefix)
            mine = next((e for e in entries if e.key == self._key), None)
            if mine is None:
                raise LeaseLostError("the candidate key vanished (its lease expired or was revoked)")
            older = [e for e in entries if e.create_revision < mine.create_revision]
            if not older:
                log.info("elected: %s", self._key.decode())
                return Leadership(self._key, mine.create_revision, self._lease)
            predecessor = max(older, key=lambda e: e.create_revision)
            await self._wait_deleted(predecessor.key, revision)

    async def _wait_deleted(self, key: bytes, revision: int) -> None:
        """Return once `key` is deleted after `revision` (it existed at `revision`)."""
        async for events in self._store.watch(key, key + b"\0", revision + 1):
            if any(e.is_delete for e in events):
                return
