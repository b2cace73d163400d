"""ClusterState: a typed, read-only snapshot of one cluster's keyspace at one etcd revision.

Built from a full read (`read_state`) or kept current by a ClusterWatch. A key whose value fails to
decode is left out of the typed maps and listed in `invalid` with the reason, so that no consumer
acts on half a record; consumers that must not ignore it (the coordinator deciding a commit) check
`invalid` themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from epochserve.controlplane.store import codec
from epochserve.controlplane.store.client import Entry, EtcdStore
from epochserve.controlplane.store.keyspace import KeyKind, Keyspace
from epochserve.controlplane.store.records import (
    CandidateRecord,
    EpochRecord,
    RolloutRecord,
    RouterRecord,
    WorkerRecord,
    WorkerStatus,
)
from epochserve.errors import SchemaError

T = TypeVar("T")
_RECORD_OF_KIND: dict[KeyKind, type] = {
    KeyKind.EPOCH: EpochRecord,
    KeyKind.ROLLOUT: RolloutRecord,
    KeyKind.WORKER: WorkerRecord,
    KeyKind.ROUTER: RouterRecord,
    KeyKind.CANDIDATE: CandidateRecord,
}


@dataclass(frozen=True, slots=True)
class Stored(Generic[T]):
    """A record with the etcd metadata that guards are built from."""

    value: T
    create_revision: int
    mod_revision: int
    lease: int  # 0 when not lease-bound


@dataclass(frozen=True, slots=True)
class Parsed:
    """One key of the cluster, decoded: exactly one of `stored` and `error` is set."""

    key: bytes
    kind: KeyKind
    name: str  # as Keyspace.classify gives it
    stored: Stored[Any] | None
    error: str | None


def parse_entry(keyspace: Keyspace, entry: Entry) -> Parsed | None:
    """Decode one key-value; None for keys of the cluster this build does not know."""
    known = keyspace.classify(entry.key)
    if known is None:
        return None
    kind, name = known
    key = entry.key.decode(errors="replace")
    try:
        record: Any = codec.decode(_RECORD_OF_KIND[kind], entry.value, key)
        own_name = {KeyKind.ROLLOUT: "version", KeyKind.WORKER: "worker_id", KeyKind.ROUTER: "router_id"}
        if kind in own_name and str(getattr(record, own_name[kind])) != name:
            raise SchemaError(key, f"{own_name[kind]} does not match the key")
    except SchemaError as e:
        return Parsed(entry.key, kind, name, None, e.reason)
    stored = Stored(record, entry.create_revision, entry.mod_revision, entry.lease)
    return Parsed(entry.key, kind, name, stored, None)


@dataclass(frozen=True, slots=True)
class ClusterState:
    """Everything under the cluster prefix at `revision`. Treat the maps as read-only."""

    revision: int
    epoch: Stored[EpochRecord] | None
    rollouts: dict[int, Stored[RolloutRecord]]  # by version, ascending
    workers: dict[str, Stored[WorkerRecord]]  # by worker id
    routers: dict[str, Stored[RouterRecord]]  # by router id
    candidates: tuple[Stored[CandidateRecord], ...]  # oldest first; the first one leads
    invalid: dict[tuple[KeyKind, str], str]  # (kind, name) → why the key's value was rejected

    @classmethod
    def build(cls, revision: int, parsed: Iterable[Parsed]) -> ClusterState:
        epoch = None
        rollouts: dict[int, Stored[RolloutRecord]] = {}
        workers: dict[str, Stored[WorkerRecord]] = {}
        routers: dict[str, Stored[RouterRecord]] = {}
        candidates: list[Stored[CandidateRecord]] = []
        invalid: dict[tuple[KeyKind, str], str] = {}
        for p in parsed:
            if p.stored is None:
                invalid[p.kind, p.name] = str(p.error)
            elif p.kind is KeyKind.EPOCH:
                epoch = p.stored
            elif p.kind is KeyKind.ROLLOUT:
                rollouts[p.stored.value.version] = p.stored
            elif p.kind is KeyKind.WORKER:
                workers[p.stored.value.worker_id] = p.stored
            elif p.kind is KeyKind.ROUTER:
                routers[p.stored.value.router_id] = p.stored
            else:
                candidates.append(p.stored)
        candidates.sort(key=lambda c: c.create_revision)
        ordered = dict(sorted(rollouts.items()))
        return cls(revision, epoch, ordered, workers, routers, tuple(candidates), invalid)

    @property
    def committed_version(self) -> int:
        """The committed epoch; 0 (the weights workers start with) before the first commit."""
        return 0 if self.epoch is None else self.epoch.value.version

    @property
    def epoch_mod_revision(self) -> int:
        """Revision of the last epoch write, 0 when never written (what the commit guard compares)."""
        return 0 if self.epoch is None else self.epoch.mod_revision

    @property
    def highest_version(self) -> int:
        """The highest version ever rolled out or committed; a new rollout must go above it."""
        return max([self.committed_version, *self.rollouts])

    def in_flight(self) -> Stored[RolloutRecord] | None:
        """The rollout in STAGING or COMMITTED, if any (the coordinator keeps it to one)."""
        flying = [r for r in self.rollouts.values() if r.value.phase.is_in_flight]
        return flying[-1] if flying else None

    @property
    def leader(self) -> Stored[CandidateRecord] | None:
        return self.candidates[0] if self.candidates else None

    def ready_workers(self) -> list[WorkerRecord]:
        """Live workers that take part in rollouts and routing, by id."""
        return [w.value for _, w in sorted(self.workers.items()) if w.value.status is WorkerStatus.READY]

    def invalid_names(self, kind: KeyKind) -> list[str]:
        """Names of the keys of `kind` whose values were rejected, sorted."""
        return sorted(name for k, name in self.invalid if k is kind)


async def read_state(store: EtcdStore, keyspace: Keyspace) -> ClusterState:
    """One consistent read of the whole cluster prefix. Raises StoreUnavailableError."""
    revision, entries = await store.get_prefix(keyspace.root)
    return ClusterState.build(revision, filter(None, (parse_entry(keyspace, e) for e in entries)))
