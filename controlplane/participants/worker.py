"""WorkerParticipant: a worker's side of rollouts (asyncio). SyncWorkerParticipant wraps it for threads.

Usage, in the worker's engine loop (between engine steps):

    participant = WorkerParticipant(etcd, "prod", WorkerIdentity("w0", "10.0.0.5:7100", tp_size=2),
                                    serving_version=v_loaded, fingerprint=fp)
    await participant.start()                       # registers workers/w0 under a lease
    while running:
        if not participant.can_accept_work: refuse new requests (fenced, or still catching up)
        directive = await participant.next_directive(timeout=0)
        match directive:
            case Stage(v, source, ...):  stage v, verify the manifest on every rank,
                                         then await participant.report_staged(v, checksum)
                                         (or report_failure(v, reason))
            case Commit(v, drain):       retire v-1 work per drain, swap, drop v-1 prefix cache,
                                         then await participant.report_serving(v, fingerprint)
            case Abort(v, _):            drop the staging buffer, then report_released(v)
            case Fenced(_):              stop accepting work; drop uncommitted staged weights
        run one engine step

Reports return True when accepted (published in the background, through etcd outages and
re-registrations; `flush()` waits for it), False when stale (the version was aborted or voided by a
fence meanwhile), and raise ProtocolError on misuse — notably report_serving(v) for a v this worker
was never told to commit. Directives describe the whole protocol in directives.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from epochserve.controlplane.participants.base import Participant
from epochserve.controlplane.participants.directives import Directive
from epochserve.controlplane.participants.worker_state import LocalWeights
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.keyspace import Keyspace, check_name
from epochserve.controlplane.store.records import DrainReport, WorkerRecord, WorkerStatus
from epochserve.controlplane.store.state import ClusterState, Stored


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """What a worker registers as; fixed for the life of the process."""

    worker_id: str  # unique in the cluster; 1-128 of A-Z a-z 0-9 . _ : -
    address: str  # HOST:PORT of its Worker service (routers connect there)
    tp_size: int = 1  # tensor-parallel ranks
    capacity: int = 0  # most sequences it runs at once (0: unknown)

    def __post_init__(self) -> None:
        check_name("worker id", self.worker_id)
        if self.tp_size < 1 or self.capacity < 0:
            raise ValueError("tp_size must be >= 1 and capacity >= 0")


class WorkerParticipant(Participant):
    """See the module docstring. Use from one event loop."""

    def __init__(
        self,
        etcd: EtcdConfig,
        cluster: str,
        identity: WorkerIdentity,
        *,
        serving_version: int = 0,
        serving_checksum: str | None = None,
        fingerprint: str | None = None,
        lease_ttl: int = 10,
        register_timeout: float = 30.0,
    ) -> None:
        """`serving_version` is the version whose weights the engine loaded at start (0: the base
        weights before any rollout). A worker behind the committed epoch registers LOADING and is
        first sent a catch-up Stage/Commit of the committed version."""
        super().__init__(
            etcd, cluster, Keyspace(cluster).worker(identity.worker_id), lease_ttl, register_timeout
        )
        self.identity = identity
        self._weights = LocalWeights(serving_version, serving_checksum, fingerprint)
        self._directives: asyncio.Queue[Directive] = asyncio.Queue()

    @property
    def serving_version(self) -> int:
        return self._weights.serving_version

    @property
    def can_accept_work(self) -> bool:
        """Registered and READY: serving the committed epoch, or swapping to it in a rollout."""
        return self.is_registered and self._weights.ready

    async def next_directive(self, timeout: float | None = None) -> Directive | None:
        """The next directive, waiting up to `timeout` seconds (0: just look); None if none came."""
        if timeout is not None and timeout <= 0:
            return None if self._directives.empty() else self._directives.get_nowait()
        try:
            return await asyncio.wait_for(self._directives.get(), timeout)
        except TimeoutError:
            return None

    async def directives(self) -> AsyncIterator[Directive]:
        """Every directive, in order, for as long as the participant runs."""
        while True:
            yield await self._directives.get()

    async def report_staged(self, version: int, checksum: str) -> bool:
        """Stage(version) succeeded: the weights are staged and verified against `checksum`, the
        manifest checksum every TP rank agreed on. The coordinator compares it across workers."""
        return self._accept(self._weights.staged_report(version, checksum))

    async def report_serving(self, version: int, fingerprint: str, retiring: int | None = None) -> bool:
        """Commit(version) is done: `version` is live, with weight `fingerprint`. Also refreshes
        the fingerprint of the version served now. ProtocolError for any other version.
        `retiring` (drain=overlap): `version` is served on the staged weights while sequences of
        this older version still run; the rollout cannot be DONE until report_retired."""
        self._weights.serving_report(version, fingerprint, retiring)
        return self._accept(True)

    async def report_retired(self, version: int, fingerprint: str) -> bool:
        """The last sequence of the retiring `version` ended; the served version's weights are now
        the live ones, with `fingerprint`. False when `version` was not retiring."""
        return self._accept(self._weights.retired_report(version, fingerprint))

    async def report_drain(self, report: DrainReport) -> bool:
        """How the last commit's drain went (rollout status shows it); may be sent again as it
        progresses (the first token of the new version, the end of the old one)."""
        self._weights.last_drain = report
        return self._accept(True)

    async def report_failure(self, version: int, reason: str) -> bool:
        """Staging or swapping `version` failed. In STAGING the rollout aborts; after its commit
        the coordinator fences this worker. The version is not staged again by this registration."""
        return self._accept(self._weights.failure_report(version, reason))

    async def report_released(self, version: int) -> bool:
        """Abort(version) is done: the staging buffer is freed."""
        return self._accept(self._weights.released_report(version))

    def _accept(self, accepted: bool) -> bool:
        if accepted:
            self._changed()
        return accepted

    def _record(self, state: ClusterState) -> WorkerRecord:
        w, ident = self._weights, self.identity
        staged = w.staged
        return WorkerRecord(
            worker_id=ident.worker_id,
            incarnation=self.incarnation,
            address=ident.address,
            tp_size=ident.tp_size,
            capacity=ident.capacity,
            status=w.status(state.committed_version),
            serving_version=w.serving_version,
            serving_checksum=w.serving_checksum,
            fingerprint=w.fingerprint,
            staged_version=staged[0] if staged else None,
            staged_checksum=staged[1] if staged else None,
            failed_version=w.failed[0] if w.failed else None,
            failure_reason=w.failed[1] if w.failed else "",
            updated_at=time.time(),
            retiring_version=w.retiring,
            last_drain=w.last_drain,
        )

    def _stored_in(self, state: ClusterState) -> Stored[WorkerRecord] | None:
        return state.workers.get(self.identity.worker_id)

    async def _on_state(self, state: ClusterState) -> None:
        was_ready = self._weights.ready
        while (directive := self._weights.next_directive(state)) is not None:
            self._directives.put_nowait(directive)
        if self._weights.status(state.committed_version) is WorkerStatus.READY and not was_ready:
            self._changed()

    async def _on_lost(self, reason: str) -> None:
        self._directives.put_nowait(self._weights.fence(reason))
