"""RolloutAgent: rank 0's side of weight-update rollouts (docs/design.md §5), run between engine steps.

It turns the control plane's directives into engine actions and reports back:

    Stage(v)   → every rank stages v in the background and verifies it (engine.weights)
                 → report_staged(v, manifest checksum) or report_failure(v, reason)
    Commit(v)  → the engine drains v-1 work per the drain policy; once drained, every rank swaps
                 v in place (between steps), the prefix cache drops v-1, the engine serves v
                 → report_serving(v, live fingerprint)
                 drain=overlap: the engine serves v at once on the staged twins, v-1 beside it
                 → report_serving(v, twins' fingerprint, retiring=v-1); once v-1 ended, every rank
                 copies the twins into the live weights → report_retired(v-1, live fingerprint)
               At the rollout's drain deadline, the v-1 sequences still running end with ABORT.
               The drain's report (first v token, v-1's end, counts) goes out as it progresses.
    Abort(v)   → every rank drops the staged copy → report_released(v)
    Fenced     → the worker stops accepting requests until the participant registers again; staged
                 weights not yet committed are dropped (an overlap's twins are committed: kept)

A failed swap leaves weights that cannot be trusted: the exception stops the engine loop and the
worker exits non-zero (fail-stop) rather than serve a mix of versions.
"""

from __future__ import annotations

import logging
import time

from epochserve.controlplane.participants.directives import Abort, Commit, Directive, Fenced, Stage
from epochserve.controlplane.participants.threaded import SyncWorkerParticipant
from epochserve.controlplane.store.records import DrainPolicy, DrainReport
from epochserve.worker.engine.drain import Drain
from epochserve.worker.engine.engine import Engine
from epochserve.worker.engine.outputs import SequenceOutput
from epochserve.worker.weights.broadcast import BroadcastSpec, is_broadcast_source

logger = logging.getLogger(__name__)

# Longest a cancelled staging may take to reach its verdict before the next one starts.
CANCEL_WAIT_SECONDS = 60.0


class RolloutAgent:
    def __init__(self, participant: SyncWorkerParticipant, worker_id: str) -> None:
        self.participant = participant
        self.worker_id = worker_id
        self.staging: int | None = None  # version being staged, not yet reported
        self.committing: int | None = None  # version committed, swap pending
        self.retiring: int | None = None  # drain=overlap: the old version still running beside v
        self._reported_drain: DrainReport | None = None
        self._final_drain: Drain | None = None

    def can_accept_work(self) -> bool:
        return self.participant.can_accept_work

    def __call__(self, engine: Engine) -> list[SequenceOutput]:
        """One pass between two steps: finish what is due, then take at most one new directive.
        Nothing once the participant closed: the worker is shutting down and has deregistered, and
        its engine only finishes the requests in flight."""
        if self.participant.is_closed:
            return []
        self._report_finished_staging(engine)
        outputs = engine.expire_drain(time.monotonic())
        if self.committing is not None and engine.ready_to_swap:
            self._swap(engine, self.committing)
        if self.retiring is not None and engine.ready_to_promote:
            self._promote(engine, self.retiring)
        directive = self.participant.next_directive(timeout=0)
        if directive is not None:
            outputs += self._handle(engine, directive)
        self._report_drain(engine)
        return outputs

    def _handle(self, engine: Engine, directive: Directive) -> list[SequenceOutput]:
        weights = engine.weights
        match directive:
            case Stage(version=version, source=source, manifest_checksum=expected, catch_up=catch_up):
                if weights.is_staging:  # a cancelled staging still finishing its verdict
                    weights.wait(CANCEL_WAIT_SECONDS)
                logger.info("staging policy version %d from %s", version, source)
                weights.stage(version, source, expected, self._broadcast_rank_base(source, catch_up))
                self.staging = version
            case Commit(version=version, drain=drain, drain_deadline=deadline):
                logger.info("policy version %d committed: draining (%s)", version, drain.value)
                old = engine.policy_version
                outputs = engine.begin_drain(version, drain, deadline)
                if engine.draining is not None and engine.draining.policy is DrainPolicy.OVERLAP:
                    staged = weights.verified()
                    assert staged is not None, "an overlap runs on verified twins"
                    self.retiring = old
                    self.participant.report_serving(version, staged.fingerprint, retiring=old)
                    if engine.ready_to_promote:
                        self._promote(engine, old)
                    return outputs
                self.committing = version
                if engine.ready_to_swap:
                    self._swap(engine, version)
                return outputs
            case Abort(version=version, reason=reason):
                logger.info("rollout of version %d aborted (%s): dropping staged weights", version, reason)
                weights.drop()
                self.staging = None
                self.participant.report_released(version)
            case Fenced(reason=reason):
                logger.warning("fenced (%s): refusing new requests until registered again", reason)
                # Only uncommitted weights are void: a committed version's (a swap pending, or the
                # twins an overlap runs v on) stays, and its sequences run to their end.
                if self.committing is None and self.retiring is None:
                    weights.drop()
                    self.staging = None
        return []

    def _broadcast_rank_base(self, source: str, catch_up: bool) -> int | None:
        """This worker's first rank in a broadcast; None (load the checkpoint instead) when it is
        not part of it or the broadcast is over (a catch-up after the commit)."""
        if catch_up or not is_broadcast_source(source):
            return None
        return BroadcastSpec.parse(source).rank_base.get(self.worker_id)

    def _report_finished_staging(self, engine: Engine) -> None:
        if self.staging is None:
            return
        result = engine.weights.take_result()
        if result is None:
            return
        self.staging = None
        if result.staged is not None:
            logger.info("policy version %d staged and verified (%s)", result.version, result.staged.location)
            engine.prepare_twins()  # before the report: a commit can follow it at once
            self.participant.report_staged(result.version, result.staged.manifest_checksum)
        else:
            self.participant.report_failure(result.version, result.error)

    def _promote(self, engine: Engine, old: int) -> None:
        """The overlap's old version ended: the twins become the live weights (every rank copies
        them in place, between steps), and the worker reports it retired."""
        drain = engine.draining
        assert drain is not None
        fingerprint = engine.weights.swap(drain.new)
        engine.complete_swap(drain.new)
        self.retiring = None
        logger.info(
            "v%d retired; serving v%d on its live weights (fingerprint %s)", old, drain.new, fingerprint
        )
        self._report_drain(engine)  # first, so that the record that completes the rollout has it
        self.participant.report_retired(old, fingerprint)

    def _report_drain(self, engine: Engine) -> None:
        """Send the latest drain's report when it changed (first new token, old version's end)."""
        drain = engine.last_drain
        if drain is None or drain is self._final_drain:
            return
        report = drain.report()
        if report != self._reported_drain:
            self._reported_drain = report
            self.participant.report_drain(report)
        if report.first_token_seconds is not None and report.retire_seconds is not None:
            self._final_drain = drain  # nothing in it changes any more

    def _swap(self, engine: Engine, version: int) -> None:
        fingerprint = engine.weights.swap(version)
        engine.complete_swap(version)
        self.committing = None
        logger.info("serving policy version %d (fingerprint %s)", version, fingerprint)
        self._report_drain(engine)  # first, so that the record that completes the rollout has it
        self.participant.report_serving(version, fingerprint)
