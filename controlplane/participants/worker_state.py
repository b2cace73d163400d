"""LocalWeights: a worker's weights as its participant knows them, and the rules that keep it honest.

Pure bookkeeping, no I/O: `next_directive` turns a cluster state into the next directive (and the
local transition it implies), the `*_report` methods check a report against the directives issued.
This is where "a worker cannot claim serving v without having loaded v" holds: serving v is
accepted only after a Commit(v) was issued for weights the engine reported staged and verified.
"""

from __future__ import annotations

from dataclasses import dataclass

from epochserve.controlplane.participants.directives import Abort, Commit, Directive, Fenced, Stage
from epochserve.controlplane.store.records import DrainPolicy, DrainReport, RolloutPhase, WorkerStatus
from epochserve.controlplane.store.state import ClusterState
from epochserve.errors import ProtocolError


@dataclass(slots=True)
class LocalWeights:
    """Mutated only by the participant, under its lock."""

    serving_version: int
    serving_checksum: str | None
    fingerprint: str | None
    staging: int | None = None  # Stage(v) issued, no report yet
    staged: tuple[int, str] | None = None  # (v, checksum) reported staged, not yet live
    committing: tuple[int, str] | None = None  # Commit(v) issued, report_serving(v) pending
    # A Commit issued before a fence: the engine may have swapped already, so its report_serving is
    # still believed, but it no longer blocks the catch-up that follows the new registration.
    fenced_commit: tuple[int, str] | None = None
    aborting: int | None = None  # Abort(v) issued, report_released(v) pending
    failed: tuple[int, str] | None = None  # (v, reason); v is not staged again by this registration
    voided: int | None = None  # last version an Abort or a fence voided: late reports of it are stale
    ready: bool = False  # latched once the worker served the committed epoch in this registration
    retiring: int | None = None  # drain=overlap: the old version still running beside the served one
    last_drain: DrainReport | None = None

    def status(self, epoch: int) -> WorkerStatus:
        """READY once serving the committed epoch (latched: a READY worker lagging a fresh commit
        stays READY, so the coordinator waits for its swap rather than forgetting it)."""
        self.ready = self.ready or self.serving_version >= epoch
        return WorkerStatus.READY if self.ready else WorkerStatus.LOADING

    def next_directive(self, state: ClusterState) -> Directive | None:
        """The next directive due on `state`, with its local transition applied; None when idle."""
        return self._abort_due(state) or self._commit_due(state) or self._stage_due(state)

    def fence(self, reason: str) -> Fenced:
        """The registration was lost: void everything staged but not committed."""
        self.voided = (
            self.staging if self.staging is not None else (self.staged[0] if self.staged else self.voided)
        )
        self.fenced_commit = self.committing or self.fenced_commit
        self.staging = self.staged = self.committing = self.aborting = self.failed = None
        self.ready = False
        return Fenced(reason)

    def staged_report(self, version: int, checksum: str) -> bool:
        """Accept report_staged; False when `version` was voided meanwhile (a stale report)."""
        if self.staging == version:
            self.staging, self.staged = None, (version, checksum)
            return True
        if self.voided == version:
            return False
        raise ProtocolError(f"report_staged(v{version}): no Stage(v{version}) is outstanding")

    def serving_report(self, version: int, fingerprint: str, retiring: int | None = None) -> None:
        """Accept report_serving: the version served now, or the one a Commit was issued for.
        `retiring`: the version before it still runs sequences (drain=overlap)."""
        if retiring is not None and retiring >= version:
            raise ProtocolError(f"report_serving(v{version}): retiring v{retiring} is not an older version")
        if version == self.serving_version:
            self.fingerprint = fingerprint
            return
        commit = next((c for c in (self.committing, self.fenced_commit) if c and c[0] == version), None)
        if commit is None:
            raise ProtocolError(
                f"report_serving(v{version}): v{version} was never committed to weights this worker staged "
                "and verified; it must stage v first"
            )
        self.serving_version, self.serving_checksum = commit
        self.fingerprint, self.committing, self.fenced_commit = fingerprint, None, None
        self.retiring = retiring
        if self.staged is not None and self.staged[0] <= version:
            self.staged = None

    def retired_report(self, version: int, fingerprint: str) -> bool:
        """Accept report_retired: the last sequence of the retiring `version` ended, and the served
        version's weights (now live, `fingerprint`) replaced it. False when it was not retiring."""
        if self.retiring != version:
            return False
        self.retiring, self.fingerprint = None, fingerprint
        return True

    def failure_report(self, version: int, reason: str) -> bool:
        """Accept report_failure of a Stage or Commit of `version`; False when it was voided."""
        if self.staging == version:
            self.staging = None
        elif (self.staged and self.staged[0] == version) or (
            self.committing and self.committing[0] == version
        ):
            self.staged = None if self.staged and self.staged[0] == version else self.staged
            self.committing = None if self.committing and self.committing[0] == version else self.committing
        elif self.voided == version:
            return False
        else:
            raise ProtocolError(
                f"report_failure(v{version}): no Stage or Commit of v{version} is outstanding"
            )
        self.failed = (version, reason)
        return True

    def released_report(self, version: int) -> bool:
        """Accept report_released after Abort(v); False when no Abort(v) is pending."""
        if self.aborting != version:
            return False
        self.aborting = None
        return True

    def _abort_due(self, state: ClusterState) -> Abort | None:
        busy = self.staging if self.staging is not None else (self.staged[0] if self.staged else None)
        if busy is None or (self.committing is not None and self.committing[0] == busy):
            return None
        rollout = state.rollouts.get(busy)
        if rollout is not None and rollout.value.phase is RolloutPhase.ABORTED:
            reason = rollout.value.reason
        elif busy < state.committed_version:  # a catch-up target overtaken by a newer commit
            reason = f"superseded by v{state.committed_version}"
        else:
            return None
        self.staging = self.staged = None
        self.aborting = self.voided = busy
        return Abort(busy, reason)

    def _commit_due(self, state: ClusterState) -> Commit | None:
        if self.staged is None or self.staged[0] != state.committed_version:
            return None
        if self.committing is not None and self.committing[0] == self.staged[0]:
            return None
        self.committing = self.staged
        rollout = state.rollouts.get(self.staged[0])
        if rollout is None:
            return Commit(self.staged[0], DrainPolicy.FINISH)
        return Commit(self.staged[0], rollout.value.drain, rollout.value.drain_deadline)

    def _stage_due(self, state: ClusterState) -> Stage | None:
        if self.staging is not None or self.staged is not None or self.committing is not None:
            return None
        epoch, flying = state.committed_version, state.in_flight()
        if self.serving_version < epoch:
            target, catch_up = epoch, True
        elif (
            flying
            and flying.value.phase is RolloutPhase.STAGING
            and flying.value.version > self.serving_version
        ):
            target, catch_up = flying.value.version, False
        else:
            return None
        rollout = state.rollouts.get(target)
        if rollout is None or (self.failed is not None and self.failed[0] == target):
            return None
        self.staging = target
        r = rollout.value
        return Stage(target, r.source, r.drain, r.manifest_checksum, catch_up)
