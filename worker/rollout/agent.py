"""RolloutAgent: rank 0's side of weight-update rollouts (docs/design.md §5), run between engine steps.

It turns the control plane's directives into engine actions and reports back:

    Stage(v)   → every rank stages v in the background and verifies it (engine.weights)
                 → report_staged(v, manifest checksum) or report_failure(v, reason)
    Commit(v)  → the engine drains v-1 work per the drain policy; once drained, every rank swaps
                 v in place (between steps), the prefix cache drops v-1, the engine serves v
                 → report_serving(v, live fingerprint)
    Abort(v)   → every rank drops the staged copy → report_released(v)
    Fenced     → the worker stops accepting requests until the participant registers again

A failed swap leaves weights that cannot be trusted: the exception stops the engine loop and the
worker exits non-zero (fail-stop) rather than serve a mix of versions.
"""

from __future__ import annotations

import logging

from epochserve.controlplane.participants.directives import Abort, Commit, Directive, Fenced, Stage
from epochserve.controlplane.participants.threaded import SyncWorkerParticipant
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

    def can_accept_work(self) -> bool:
        return self.participant.can_accept_work

    def __call__(self, engine: Engine) -> list[SequenceOutput]:
        """One pass between two steps: finish what is due, then take at most one new directive."""
        self._report_finished_staging(engine)
        if self.committing is not None and engine.ready_to_swap:
            self._swap(engine, self.committing)
        directive = self.participant.next_directive(timeout=0)
        return self._handle(engine, directive) if directive is not None else []

    def _handle(self, engine: Engine, directive: Directive) -> list[SequenceOutput]:
        weights = engine.weights
        match directive:
            case Stage(version=version, source=source, manifest_checksum=expected, catch_up=catch_up):
                if weights.is_staging:  # a cancelled staging still finishing its verdict
                    weights.wait(CANCEL_WAIT_SECONDS)
                logger.info("staging policy version %d from %s", version, source)
                weights.stage(version, source, expected, self._broadcast_rank_base(source, catch_up))
                self.staging = version
            case Commit(version=version, drain=drain):
                logger.info("policy version %d committed: draining (%s)", version, drain.value)
                self.committing = version
                outputs = engine.begin_drain(version, drain)
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
                if self.committing is None:
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
            self.participant.report_staged(result.version, result.staged.manifest_checksum)
        else:
            self.participant.report_failure(result.version, result.error)

    def _swap(self, engine: Engine, version: int) -> None:
        fingerprint = engine.weights.swap(version)
        engine.complete_swap(version)
        self.committing = None
        logger.info("serving policy version %d (fingerprint %s)", version, fingerprint)
        self.participant.report_serving(version, fingerprint)
