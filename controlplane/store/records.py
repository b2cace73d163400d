"""The records stored as JSON values in the keyspace, and their lifecycle enums.

Records are frozen (they cross threads and tasks); each validates itself in `__post_init__`
(raising ValueError), so a record that exists is a record that is well formed. codec.py turns them
into JSON with a schema version and back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from epochserve.controlplane.store.keyspace import MAX_VERSION, check_name, check_version


class RolloutPhase(enum.StrEnum):
    """Lifecycle of one rollout (docs/design.md §5): STAGING → COMMITTED → DONE, or STAGING → ABORTED."""

    STAGING = "STAGING"
    COMMITTED = "COMMITTED"
    DONE = "DONE"
    ABORTED = "ABORTED"

    @property
    def is_in_flight(self) -> bool:
        """STAGING or COMMITTED: at most one rollout of a cluster is in flight."""
        return self in (RolloutPhase.STAGING, RolloutPhase.COMMITTED)

    @property
    def is_committed(self) -> bool:
        """COMMITTED or DONE: the epoch moved to this version, which can no longer be aborted."""
        return self in (RolloutPhase.COMMITTED, RolloutPhase.DONE)

    @property
    def is_terminal(self) -> bool:
        """DONE or ABORTED: nothing about this rollout changes any more."""
        return self in (RolloutPhase.DONE, RolloutPhase.ABORTED)


class DrainPolicy(enum.StrEnum):
    """What a worker does with requests still running on v-1 when v commits (the rollout's `drain`:
    its value is what etcd's JSON, the CLI and the PolicyRollout spell)."""

    FINISH = "finish"  # let running v-1 sequences complete, admit only v
    ABORT = "abort"  # abort them; the router re-runs those that streamed nothing
    # let them finish on v-1's weights while new requests start at once on v's staged weights,
    # each step running the two versions side by side; degrades to FINISH when both weight sets
    # and the KV pool do not fit
    OVERLAP = "overlap"


class WorkerStatus(enum.StrEnum):
    """Whether a registered worker counts for rollouts and routing."""

    LOADING = "loading"  # registered but behind the committed epoch (or still loading): not routable
    READY = "ready"  # serves the committed epoch and takes part in rollouts


@dataclass(frozen=True, slots=True)
class DrainReport:
    """How one worker moved to `version`: what happened to the work of the version before it.
    Times count from the moment the worker received the commit."""

    version: int
    drain: DrainPolicy  # the policy applied (OVERLAP degraded to FINISH is reported as FINISH)
    first_token_seconds: float | None  # until the first token of `version` (None: none yet)
    retire_seconds: float | None  # until the last sequence of the old version ended (None: not yet)
    finished_previous: int = 0  # old-version sequences that ran to their end after the commit
    aborted_previous: int = 0  # old-version sequences aborted (drain=abort, or at the drain deadline)
    reason: str = ""  # why the policy applied differs from the rollout's, if it does

    def __post_init__(self) -> None:
        check_version(self.version)
        _check_count("finished_previous", self.finished_previous, 0)
        _check_count("aborted_previous", self.aborted_previous, 0)


def _check_count(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not low <= value <= MAX_VERSION:
        raise ValueError(f"{name} {value!r}: must be an integer >= {low}")


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """`epoch`: the committed policy version. Written only by the commit transaction."""

    version: int
    committed_at: float  # unix seconds
    committed_by: str  # coordinator id of the leader that committed

    def __post_init__(self) -> None:
        check_version(self.version)


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """`rollouts/<v>`: one rollout. Written only by the leading coordinator, in guarded transactions."""

    version: int
    source: str  # checkpoint path, or "nccl" for a broadcast from the trainer
    drain: DrainPolicy
    phase: RolloutPhase
    created_at: float  # unix seconds
    updated_at: float  # unix seconds of the last phase change
    updated_by: str  # coordinator id of the last writer (audits "no write after losing the lead")
    commit_timeout: float  # seconds the COMMITTED phase may last before laggards are fenced
    # The expected manifest checksum. Unset at start means "whatever every worker agrees on"; the
    # commit writes the agreed value, which workers must then report as serving_checksum.
    manifest_checksum: str | None = None
    # When the current phase times out (unix seconds); None once terminal. Stored, not derived, so a
    # new leader keeps the deadline its predecessor set.
    phase_deadline: float | None = None
    reason: str = ""  # why ABORTED, or what the COMMITTED phase had to fence
    fenced_workers: tuple[str, ...] = field(default=())  # dropped for not serving v in time
    fenced_routers: tuple[str, ...] = field(default=())  # dropped for not acking v in time
    # Seconds after a worker receives the commit that old-version sequences may keep running; at
    # the deadline they end with ABORT. None: until they finish (the commit timeout still fences).
    drain_deadline: float | None = None

    def __post_init__(self) -> None:
        check_version(self.version)
        if not self.source:
            raise ValueError("source: must name a checkpoint path or 'nccl'")
        if not self.commit_timeout > 0:
            raise ValueError("commit_timeout: must be > 0 seconds")
        if self.drain_deadline is not None and not 0 <= self.drain_deadline < self.commit_timeout:
            raise ValueError("drain_deadline: must be >= 0 and below the commit timeout")
        if self.phase.is_in_flight != (self.phase_deadline is not None):
            raise ValueError(f"phase_deadline: must be set exactly while in flight (phase {self.phase})")

    def moved_to(
        self, phase: RolloutPhase, *, now: float, by: str, deadline: float | None, reason: str | None = None
    ) -> RolloutRecord:
        """A copy in `phase`, stamped with who moved it and when (other fields kept)."""
        return replace(
            self,
            phase=phase,
            updated_at=now,
            updated_by=by,
            phase_deadline=deadline,
            reason=self.reason if reason is None else reason,
        )


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """`workers/<id>`: a live worker, bound to its lease. Written only by its WorkerParticipant."""

    worker_id: str
    incarnation: str  # random per participant process: tells a re-registration from a duplicate id
    address: str  # host:port of its Worker service
    tp_size: int
    capacity: int  # most sequences it runs at once (routers balance on it)
    status: WorkerStatus
    serving_version: int  # 0: the weights it was started with, before any rollout
    serving_checksum: str | None  # manifest checksum of the weights it serves, when known
    fingerprint: str | None  # fingerprint of its live weights, measured after the last swap
    staged_version: int | None = None  # a version verified in the staging buffer, not live
    staged_checksum: str | None = None  # manifest checksum that staging verified against
    failed_version: int | None = None  # a version it failed to stage or swap
    failure_reason: str = ""
    updated_at: float = 0.0
    # drain=overlap: the old version whose sequences still run beside serving_version (a rollout is
    # not DONE while any worker retires one)
    retiring_version: int | None = None
    last_drain: DrainReport | None = None  # how the last commit's drain went

    def __post_init__(self) -> None:
        check_name("worker id", self.worker_id)
        _check_count("tp_size", self.tp_size, 1)
        _check_count("capacity", self.capacity, 0)
        _check_count("serving_version", self.serving_version, 0)
        if (self.staged_version is None) != (self.staged_checksum is None):
            raise ValueError("staged_version and staged_checksum: set both or neither")
        if self.staged_version is not None:
            check_version(self.staged_version)
        if self.failed_version is not None:
            check_version(self.failed_version)
        if self.retiring_version is not None and not self.retiring_version < self.serving_version:
            raise ValueError("retiring_version: must be below serving_version")

    def serves(self, version: int, checksum: str | None) -> bool:
        """True when it serves `version`, with the agreed checksum when one is known."""
        return self.serving_version == version and (checksum is None or self.serving_checksum == checksum)


@dataclass(frozen=True, slots=True)
class RouterRecord:
    """`routers/<id>`: a live router, bound to its lease. Written only by its RouterParticipant."""

    router_id: str
    incarnation: str
    address: str
    acked_epoch: int  # highest committed version its admission has switched to (0: none yet)
    updated_at: float = 0.0

    def __post_init__(self) -> None:
        check_name("router id", self.router_id)
        _check_count("acked_epoch", self.acked_epoch, 0)


@dataclass(frozen=True, slots=True)
class CandidateRecord:
    """`election/coordinator/<lease>`: a coordinator in the election; the oldest key leads."""

    coordinator_id: str
    admin_address: str  # where its Admin service listens (followers forward there)

    def __post_init__(self) -> None:
        check_name("coordinator id", self.coordinator_id)


Record = EpochRecord | RolloutRecord | WorkerRecord | RouterRecord | CandidateRecord
