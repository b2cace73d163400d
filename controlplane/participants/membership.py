"""Membership: one participant's lease-bound registration key (`workers/<id>` or `routers/<id>`).

A registration is (lease, key creation revision). Every update is guarded by that creation
revision, so once the key is gone — the lease expired, or the coordinator fenced the participant by
deleting it — no update can resurrect it: the participant must register again, with a new lease.

Two processes must not share an id. Each participant has a random `incarnation`; registering over
a key held by another incarnation waits for that key to go away (its lease to expire — a restarted
worker waits at most one TTL) and gives up with DuplicateParticipantError after `timeout`. The
participant's own stale key (same incarnation, older lease) is taken over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from epochserve.controlplane.store import codec
from epochserve.controlplane.store.client import EtcdStore, created_at, modified_at, put_op
from epochserve.controlplane.store.lease import Lease
from epochserve.controlplane.store.records import RouterRecord, WorkerRecord
from epochserve.errors import DuplicateParticipantError, LeaseLostError, SchemaError

log = logging.getLogger(__name__)
_HOLDER_POLL = 0.2  # seconds between looks at a key another incarnation holds

ParticipantRecord = WorkerRecord | RouterRecord


class Membership:
    """Register, update and drop one key. Not reusable across keys."""

    def __init__(self, store: EtcdStore, key: bytes, ttl: int) -> None:
        self._store = store
        self.key = key
        self._ttl = ttl
        self.lease: Lease | None = None
        self.create_revision = 0  # of the registered key; 0 while unregistered
        self.registered_at = 0  # store revision at which the registration was read back

    @property
    def is_registered(self) -> bool:
        return self.lease is not None and self.create_revision > 0 and not self.lease.is_lost

    async def register(self, record: ParticipantRecord, timeout: float) -> None:
        """Open a fresh lease and write `record` under it (see module docstring). Raises
        DuplicateParticipantError, StoreUnavailableError (then nothing stays registered)."""
        await self.drop()
        lease = await Lease.open(self._store, self._ttl)
        try:
            await self._claim(lease, record, timeout)
        except BaseException:
            await lease.close()
            raise
        self.lease = lease

    async def update(self, record: ParticipantRecord) -> bool:
        """Overwrite the registered value; False when the registration is gone (the caller must
        register again). Raises StoreUnavailableError."""
        if self.lease is None or not self.is_registered:
            return False
        guard = created_at(self.key, self.create_revision)
        try:
            return await self._store.txn(
                [guard], [put_op(self.key, codec.encode(record), self.lease.lease_id)]
            )
        except LeaseLostError:
            return False

    async def drop(self) -> None:
        """Give the registration up: revoke the lease, deleting the key if it is still ours."""
        lease, self.lease, self.create_revision = self.lease, None, 0
        if lease is not None:
            await lease.close(revoke=True)

    async def _claim(self, lease: Lease, record: ParticipantRecord, timeout: float) -> None:
        value = codec.encode(record)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            existing = await self._store.get(self.key)
            if existing is None:
                guard = created_at(self.key, 0)
            elif self._holder(existing.value) == record.incarnation:
                guard = modified_at(self.key, existing.mod_revision)  # our own stale registration
            elif asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(_HOLDER_POLL)
                continue
            else:
                raise DuplicateParticipantError(f"{self.key.decode()} is held by another live process")
            if await self._store.txn([guard], [put_op(self.key, value, lease.lease_id)]):
                break
        revision, entries = await self._store.get_prefix(self.key)
        mine = next((e for e in entries if e.key == self.key and e.lease == lease.lease_id), None)
        if mine is None:
            raise LeaseLostError(f"{self.key.decode()} vanished right after registering")
        self.create_revision, self.registered_at = mine.create_revision, revision
        log.info("registered %s (lease %x)", self.key.decode(), lease.lease_id)

    def _holder(self, value: bytes) -> str | None:
        """The incarnation written in a stored value; None when unreadable (treated as foreign)."""
        key = self.key.decode()
        with contextlib.suppress(SchemaError):
            return codec.decode(WorkerRecord, value, key).incarnation
        with contextlib.suppress(SchemaError):
            return codec.decode(RouterRecord, value, key).incarnation
        return None
