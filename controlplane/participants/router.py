"""RouterParticipant: a router's side of rollouts (asyncio). SyncRouterParticipant wraps it for threads.

A router registers `routers/<id>` under a lease, follows the committed epoch and the workers, and
acks each epoch once its admission has switched to it (docs/design.md §1 I2: the coordinator reports a
rollout DONE only after every live router acked v). Usage:

    router = RouterParticipant(etcd, "prod", "r0", "10.0.0.9:7000")
    await router.start()
    async for epoch in router.epochs():        # the current epoch, then each newer one
        admission.pin_new_requests_to(epoch)   # from now on nothing is admitted below `epoch`
        await router.ack_epoch(epoch)
    ...
    view = router.view()                       # committed epoch + workers, for balancing
    targets = view.serving(pinned_version)

Ack only after admission switched: the ack is the router's promise behind DONE. A router whose
registration is lost keeps its admission state and re-registers with the epoch it acked; the
coordinator may fence a router that does not ack within the commit timeout (it re-registers).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from epochserve.controlplane.participants.base import Participant
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.records import RolloutPhase, RouterRecord, WorkerStatus
from epochserve.controlplane.store.state import ClusterState, Stored
from epochserve.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One registered worker, as routers see it."""

    worker_id: str
    address: str  # HOST:PORT of its Worker service
    tp_size: int
    capacity: int  # most sequences at once (0: unknown)
    serving_version: int
    is_ready: bool  # READY: routable; otherwise still loading the committed version


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What a router needs from the control plane, at one etcd revision."""

    revision: int
    committed_epoch: int  # 0 before the first commit
    workers: tuple[WorkerView, ...]  # by worker id
    # Whether the rollout of committed_epoch is DONE (True for epoch 0: nothing to roll out).
    is_committed_done: bool = False

    def serving(self, version: int) -> list[WorkerView]:
        """READY workers serving exactly `version`."""
        return [w for w in self.workers if w.is_ready and w.serving_version == version]

    @classmethod
    def of(cls, state: ClusterState) -> ClusterView:
        workers = tuple(
            WorkerView(
                w.worker_id,
                w.address,
                w.tp_size,
                w.capacity,
                w.serving_version,
                w.status is WorkerStatus.READY,
            )
            for w in (s.value for _, s in sorted(state.workers.items()))
        )
        committed = state.committed_version
        rollout = state.rollouts.get(committed)
        is_done = committed == 0 or (rollout is not None and rollout.value.phase is RolloutPhase.DONE)
        return cls(state.revision, committed, workers, is_done)


class RouterParticipant(Participant):
    """See the module docstring. Use from one event loop."""

    def __init__(
        self,
        etcd: EtcdConfig,
        cluster: str,
        router_id: str,
        address: str,
        *,
        acked_epoch: int = 0,
        lease_ttl: int = 10,
        register_timeout: float = 30.0,
    ) -> None:
        super().__init__(etcd, cluster, Keyspace(cluster).router(router_id), lease_ttl, register_timeout)
        self.router_id = router_id
        self.address = address
        self._acked = acked_epoch

    @property
    def acked_epoch(self) -> int:
        return self._acked

    def view(self) -> ClusterView:
        """The latest view (empty before the first read of the cluster)."""
        state = self._watch.state
        return ClusterView(0, 0, ()) if state is None else ClusterView.of(state)

    async def wait_view(self, predicate: Callable[[ClusterView], bool], timeout: float | None) -> ClusterView:
        """The first view satisfying `predicate`; TimeoutError after `timeout` seconds."""
        state = await self._watch.wait_for(lambda s: predicate(ClusterView.of(s)), timeout)
        return ClusterView.of(state)

    async def epochs(self) -> AsyncIterator[int]:
        """The committed epoch, then every newer one as it is observed: strictly increasing.
        Raises ProtocolError should the epoch ever go back (that would be a control-plane bug)."""
        state = await self._watch.wait_for(lambda s: True, None)
        last = state.committed_version
        yield last
        while True:
            state = await self._watch.wait_for(functools.partial(_epoch_differs, last), None)
            epoch = state.committed_version
            if epoch < last:
                raise ProtocolError(f"the committed epoch went back from v{last} to v{epoch}")
            last = epoch
            yield epoch

    async def ack_epoch(self, version: int) -> bool:
        """Record that admission switched to `version` (published in the background; see flush()).
        Acking at or below the acked epoch changes nothing; acking above the observed committed
        epoch is a ProtocolError."""
        observed = self.view().committed_epoch
        if version > observed:
            raise ProtocolError(f"ack_epoch(v{version}): the observed committed epoch is v{observed}")
        if version > self._acked:
            self._acked = version
            self._changed()
        return True

    def _record(self, state: ClusterState) -> RouterRecord:
        return RouterRecord(self.router_id, self.incarnation, self.address, self._acked, time.time())

    def _stored_in(self, state: ClusterState) -> Stored[RouterRecord] | None:
        return state.routers.get(self.router_id)


def _epoch_differs(epoch: int, state: ClusterState) -> bool:
    return state.committed_version != epoch
