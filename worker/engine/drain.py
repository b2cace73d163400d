"""Drain: one worker's move from policy version `old` to `new` after a rollout's commit.

docs/design.md §5. The policies, as the engine applies them:
- finish: old sequences run to their end on the live weights; new requests wait (HOLD) until
  the last one ended and the staged weights were swapped in.
- abort: old sequences end at once with ABORT; the swap follows immediately.
- overlap: new requests start at once on the staged twins (staged_forward.py) while old ones run
  to their end on the live weights, each version in its own forward pass of every step. Each
  version has max_num_seqs slots of its own (scheduler.py, overlap_version), so the new one starts
  at once even when the old one fills the batch. When the last old sequence ended, the twins are
  copied into the live parameters between two steps.
A deadline (the rollout's drain_deadline) ends every old sequence still running with ABORT.

The Drain also keeps what the rollout status reports (DrainReport): when the first new-version
token came and when the old version's last sequence ended, counted from the commit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from epochserve.controlplane.store.records import DrainPolicy, DrainReport


@dataclass(slots=True)
class Drain:
    old: int
    new: int
    policy: DrainPolicy  # as applied: overlap without runnable twins is applied as finish
    deadline_seconds: float | None = None  # from `started`; None: no deadline
    reason: str = ""  # why `policy` differs from the rollout's
    started: float = 0.0  # time.monotonic() when the commit reached the engine
    first_new_token: float | None = None  # monotonic
    retired: float | None = None  # monotonic: the last old sequence ended
    old_running: int = 0  # old-version sequences not yet finished
    finished_old: int = 0
    aborted_old: int = 0

    def __post_init__(self) -> None:
        self.started = self.started or time.monotonic()

    @property
    def overlapping(self) -> bool:
        """Both versions run: the new one on the staged twins (until the old one retired)."""
        return self.policy is DrainPolicy.OVERLAP and self.retired is None

    @property
    def takes_old_work(self) -> bool:
        """Whether requests pinned to the old version may still start: under finish until the swap,
        under overlap until the old version retired (its last sequence ended: the promotion that
        follows between two steps would change its weights under a new one), never under abort."""
        if self.policy is DrainPolicy.ABORT:
            return False
        return self.policy is DrainPolicy.FINISH or self.retired is None

    def deadline_passed(self, now: float) -> bool:
        if self.deadline_seconds is None or self.retired is not None:
            return False
        return now >= self.started + self.deadline_seconds

    def saw_token(self, version: int, now: float) -> None:
        """A sequence of `version` produced its first token at `now`."""
        if version == self.new and self.first_new_token is None:
            self.first_new_token = now

    def started_old(self) -> None:
        """A sequence pinned to the old version started during the drain."""
        self.old_running += 1

    def ended_old(self, aborted: bool, now: float) -> None:
        """An old-version sequence finished; the last one retires the old version."""
        self.old_running -= 1
        if aborted:
            self.aborted_old += 1
        else:
            self.finished_old += 1
        if self.old_running == 0 and self.retired is None:
            self.retired = now

    def report(self) -> DrainReport:
        def since_commit(moment: float | None) -> float | None:
            return None if moment is None else max(0.0, moment - self.started)

        return DrainReport(
            version=self.new,
            drain=self.policy,
            first_token_seconds=since_commit(self.first_new_token),
            retire_seconds=since_commit(self.retired),
            finished_previous=self.finished_old,
            aborted_previous=self.aborted_old,
            reason=self.reason,
        )
