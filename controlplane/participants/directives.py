"""Directives: what a WorkerParticipant tells its engine to do, in the order it must happen.

Created by the participant from the cluster state; consumed by the worker's engine loop, one at a
time, between engine steps. Each names the report that completes it:

    Stage(v)   load v into the staging buffer, verify the manifest on every TP rank
               → report_staged(v, checksum)  or  report_failure(v, reason)
    Commit(v)  v is committed: retire v-1 work per `drain`, swap staged → live between steps,
               drop v-1 prefix-cache entries → report_serving(v, fingerprint)  (or report_failure)
               drain=overlap: serve v on the staged weights at once, v-1 work beside it
               → report_serving(v, fingerprint, retiring=v-1), later report_retired(v-1)
    Abort(v)   the rollout of v was aborted: drop the staging buffer → report_released(v)
    Fenced     the registration was lost: stop accepting work at once; anything staged but not
               committed is void (no report). The participant registers again by itself;
               `can_accept_work` turns true once it has and the worker serves the committed epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from epochserve.controlplane.store.records import DrainPolicy


@dataclass(frozen=True, slots=True)
class Stage:
    """Load `version` without touching live weights."""

    version: int
    source: str  # checkpoint path, or "nccl" (receive the shards from the trainer's broadcast)
    drain: DrainPolicy  # how the later swap retires v-1 work (known now so the engine can prepare)
    manifest_checksum: str | None  # expected checksum when the rollout names one
    catch_up: bool  # True: v is already committed and this worker is catching up (rejoin)


@dataclass(frozen=True, slots=True)
class Commit:
    """Swap the staged `version` live now (between engine steps)."""

    version: int
    drain: DrainPolicy
    drain_deadline: float | None = None  # seconds v-1 sequences may still run (None: no limit)


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the staged (or staging) `version`; live weights stay untouched."""

    version: int
    reason: str


@dataclass(frozen=True, slots=True)
class Fenced:
    """The registration is gone: stop accepting work; staged, uncommitted weights are void."""

    reason: str


Directive = Stage | Commit | Abort | Fenced
