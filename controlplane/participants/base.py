"""Participant: the registration lifecycle that workers and routers share.

    register (fresh lease) → follow the cluster (on_state for every change) → lost → on_lost
        ↑                                                                              │
        └──────────────────────────── drop the old lease ←─────────────────────────────┘

A registration is lost when its lease is (expired or unconfirmed for a TTL) or when its key
disappears or is replaced (the coordinator fenced it). Subclasses build the record (`_record`) from
their local state and call `_changed()` after changing it; a publisher task writes the record,
retrying while etcd is unreachable, always guarded by the registration (nothing is written on
behalf of a lost one; the next registration carries the latest local state). `flush()` waits until
what was changed so far is in etcd.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import uuid
from typing import Any

from epochserve.controlplane.participants.membership import Membership, ParticipantRecord
from epochserve.controlplane.store.client import EtcdStore
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.state import ClusterState, Stored
from epochserve.controlplane.store.watch import ClusterWatch
from epochserve.errors import (
    ControlPlaneError,
    DuplicateParticipantError,
    LeaseLostError,
    StoreUnavailableError,
)

log = logging.getLogger(__name__)
_RETRY_PAUSE = 0.25  # seconds between registration attempts while etcd is down


class Participant(abc.ABC):
    """Owns one etcd connection, one cluster watch and one registration."""

    def __init__(
        self, etcd: EtcdConfig, cluster: str, key: bytes, lease_ttl: int, register_timeout: float
    ) -> None:
        self.keyspace = Keyspace(cluster)
        self.incarnation = uuid.uuid4().hex
        self._store = EtcdStore(etcd)
        self._watch = ClusterWatch(self._store, self.keyspace)
        self._membership = Membership(self._store, key, lease_ttl)
        self._register_timeout = register_timeout
        self._registered = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._fatal: BaseException | None = None
        self._dirty = asyncio.Event()
        self._num_changes = 0  # local changes so far
        self._num_published = 0  # local changes known to be in etcd
        self._published = asyncio.Condition()

    @property
    def is_registered(self) -> bool:
        """True while the registration is known to hold (False between a loss and re-registering)."""
        return self._registered.is_set() and self._membership.is_registered

    async def start(self, timeout: float = 30.0) -> None:
        """Connect, register, and keep the registration. Returns once registered; raises
        TimeoutError after `timeout` s, DuplicateParticipantError when the id is taken."""
        await self._store.connect()
        self._watch.start()
        name = self._membership.key.decode()
        self._tasks = [
            asyncio.create_task(self._run(), name=f"register {name}"),
            asyncio.create_task(self._publish(), name=f"publish {name}"),
        ]
        await self.wait_registered(timeout)

    async def wait_registered(self, timeout: float | None) -> None:
        """Wait until registered (again); raises the error that stopped the participant, if any."""
        await asyncio.wait_for(self._wait_registered(), timeout)

    async def flush(self, timeout: float | None) -> None:
        """Wait until every local change made so far is written (or carried by a new
        registration); raises TimeoutError after `timeout` seconds."""
        target = self._num_changes
        async with self._published:
            await asyncio.wait_for(self._published.wait_for(lambda: self._num_published >= target), timeout)

    async def close(self) -> None:
        """Stop following and deregister (revoking the lease deletes the key at once)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(StoreUnavailableError):
            await self._membership.drop()
        await self._watch.stop()
        await self._store.close()

    @abc.abstractmethod
    def _record(self, state: ClusterState) -> ParticipantRecord:
        """The value to (re)register or write now, given the latest cluster state."""

    @abc.abstractmethod
    def _stored_in(self, state: ClusterState) -> Stored[Any] | None:
        """This participant's key as `state` shows it."""

    async def _on_state(self, state: ClusterState) -> None:  # noqa: B027 (optional hook)
        """Called for every state while registered (after the registration is visible)."""

    async def _on_lost(self, reason: str) -> None:  # noqa: B027 (optional hook)
        """Called once per lost registration, before registering again."""

    def _changed(self) -> None:
        """The local state changed: publish the record (in the background)."""
        self._num_changes += 1
        self._dirty.set()

    async def _mark_published(self, num_changes: int) -> None:
        async with self._published:
            self._num_published = max(self._num_published, num_changes)
            self._published.notify_all()

    async def _publish(self) -> None:
        """Write the record after each change; retry while etcd is unreachable. A lost registration
        needs no retry: registering again writes the then-current record."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            num_changes = self._num_changes
            async with self._write_lock:
                state = self._watch.state
                if state is None or not self.is_registered:
                    continue
                try:
                    written = await self._membership.update(self._record(state))
                except ControlPlaneError as e:  # unreachable or refused: keep the change, retry
                    log.info("%s: cannot publish yet: %s", self._membership.key.decode(), e)
                    written = False
                    self._dirty.set()
            if written:
                await self._mark_published(num_changes)
            else:
                await asyncio.sleep(_RETRY_PAUSE)

    async def _wait_registered(self) -> None:
        while not self._registered.is_set():
            if self._fatal is not None:
                raise self._fatal
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._registered.wait(), _RETRY_PAUSE)

    async def _run(self) -> None:
        try:
            await self._keep_registered()
        except Exception as e:  # a bug: surface it to wait_registered() rather than look registered
            log.exception("%s: participant stopped", self._membership.key.decode())
            self._fatal = e
            self._registered.clear()
            raise

    async def _keep_registered(self) -> None:
        while True:
            state = await self._watch.wait_for(lambda s: True, None)
            try:
                async with self._write_lock:
                    num_changes = self._num_changes
                    await self._membership.register(self._record(state), self._register_timeout)
            except DuplicateParticipantError as e:
                log.error("%s", e)
                self._fatal = e
                return
            except ControlPlaneError as e:  # etcd unreachable, or the new lease lost at once
                log.info("%s: cannot register yet: %s", self._membership.key.decode(), e)
                await asyncio.sleep(_RETRY_PAUSE)
                continue
            await self._mark_published(num_changes)
            self._registered.set()
            reason = await self._follow()
            self._registered.clear()
            log.warning("%s: registration lost: %s", self._membership.key.decode(), reason)
            await self._on_lost(reason)
            with contextlib.suppress(StoreUnavailableError):
                await self._membership.drop()

    async def _follow(self) -> str:
        """Feed states to `_on_state` until the registration is lost; returns why it was."""
        lease = self._membership.lease
        assert lease is not None
        try:
            return await lease.run(self._follow_states())
        except LeaseLostError as e:
            return str(e)

    async def _follow_states(self) -> str:
        registered_at = self._membership.registered_at
        state = await self._watch.wait_for(lambda s: s.revision >= registered_at, None)
        while True:
            stored = self._stored_in(state)
            if stored is None or stored.create_revision != self._membership.create_revision:
                return "the registration key was deleted (fenced by the coordinator, or its lease expired)"
            await self._on_state(state)
            state = await self._watch.next_state(state.revision, None) or state
