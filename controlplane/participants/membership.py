"""Membership: one participant's lease-bound registration key (`workers/<id>` or `routers/<id>`).

A registration is (session, key creation revision). Every update is guarded by that creation
revision, so once the key is gone — the lease expired, or the coordinator fenced the participant by
deleting it — no update can resurrect it: the participant must register again, with a new session.

Two processes must not share an id. Each participant has a random `incarnation`; registering over
a key held by another incarnation waits for that key to go away (its lease to expire — a restarted
worker waits at most one TTL) and gives up with DuplicateParticipantError after `timeout`. The
participant's own stale key (same incarnation, older lease) is taken over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from epochserve.controlplane.errors import DuplicateParticipantError, SchemaError, SessionLostError
from epochserve.controlplane.store import codec
from epochserve.controlplane.store.client import EtcdStore, created_at, modified_at, put_op
from epochserve.controlplane.store.records import RouterRecord, WorkerRecord
from epochserve.controlplane.store.session import Session

log = logging.getLogger(__name__)
_HOLDER_POLL = 0.2  # seconds between looks at a key another incarnation holds

ParticipantRecord = WorkerRecord | RouterRecord


class Membership:
    """Register, update and drop one key. Not reusable across keys."""

    def __init__(self, store: EtcdStore, key: bytes, ttl: int) -> None:
        self._store = store
        self.key = key
        self._ttl = ttl
        self.session: Session | None = None
        self.create_revision = 0  # of the registered key; 0 while unregistered
        self.registered_at = 0  # store revision at which the registration was read back

    @property
    def is_registered(self) -> bool:
        return self.session is not None and self.create_revision > 0 and not self.session.is_lost

    async def register(self, record: ParticipantRecord, timeout: float) -> None:
        """Open a fresh session and write `record` under it (see module docstring). Raises
        DuplicateParticipantError, StoreUnavailableError (then nothing stays registered)."""
        await self.drop()
        session = await Session.open(self._store, self._ttl)
        try:
            await self._claim(session, record, timeout)
        except BaseException:
            await session.close()
            raise
        self.session = session

    async def update(self, record: ParticipantRecord) -> bool:
        """Overwrite the registered value; False when the registration is gone (the caller must
        register again). Raises StoreUnavailableError."""
        if self.session is None or not self.is_registered:
            return False
        guard = created_at(self.key, self.create_revision)
        try:
            return await self._store.txn(
                [guard], [put_op(self.key, codec.encode(record), self.session.lease_id)]
            )
        except SessionLostError:
            return False

    async def drop(self) -> None:
        """Give the registration up: revoke the lease, deleting the key if it is still ours."""
        session, self.session, self.create_revision = self.session, None, 0
        if session is not None:
            await session.close(revoke=True)

    async def _claim(self, session: Session, record: ParticipantRecord, timeout: float) -> None:
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
            if await self._store.txn([guard], [put_op(self.key, value, session.lease_id)]):
                break
        revision, entries = await self._store.get_prefix(self.key)
        mine = next((e for e in entries if e.key == self.key and e.lease == session.lease_id), None)
        if mine is None:
            raise SessionLostError(f"{self.key.decode()} vanished right after registering")
        self.create_revision, self.registered_at = mine.create_revision, revision
        log.info("registered %s (lease %x)", self.key.decode(), session.lease_id)

    def _holder(self, value: bytes) -> str | None:
        """The incarnation written in a stored value; None when unreadable (treated as foreign)."""
        key = self.key.decode()
        with contextlib.suppress(SchemaError):
            return codec.decode(WorkerRecord, value, key).incarnation
        with contextlib.suppress(SchemaError):
            return codec.decode(RouterRecord, value, key).incarnation
        return None
