"""A worker participant's local protocol rules (participants/worker_state.py): which directive comes
next, and which reports it believes — above all, no serving v without having staged v."""

from __future__ import annotations

from dataclasses import replace

import pytest

from epochserve.controlplane.participants.directives import Abort, Commit, Fenced, Stage
from epochserve.controlplane.participants.worker_state import LocalWeights
from epochserve.controlplane.store.records import (
    DrainPolicy,
    EpochRecord,
    RolloutPhase,
    RolloutRecord,
    WorkerStatus,
)
from epochserve.controlplane.store.state import ClusterState, Stored
from epochserve.errors import ProtocolError


def rollout(v: int, phase: RolloutPhase, reason: str = "") -> Stored[RolloutRecord]:
    deadline = 100.0 if phase.is_in_flight else None
    record = RolloutRecord(
        v, f"/ckpt/{v}", DrainPolicy.ABORT, phase, 1.0, 1.0, "c0", 30.0, "sum", deadline, reason
    )
    return Stored(record, 1, 1, 0)


def state(epoch: int, *rollouts: Stored[RolloutRecord]) -> ClusterState:
    stored_epoch = Stored(EpochRecord(epoch, 1.0, "c0"), 1, 1, 0) if epoch else None
    return ClusterState(5, stored_epoch, {r.value.version: r for r in rollouts}, {}, {}, (), {})


def test_a_full_rollout_from_stage_to_serving():
    w = LocalWeights(serving_version=1, serving_checksum="s1", fingerprint="fp1")
    staging = state(1, rollout(2, RolloutPhase.STAGING))
    assert w.status(1) is WorkerStatus.READY
    assert w.next_directive(staging) == Stage(2, "/ckpt/2", DrainPolicy.ABORT, "sum", catch_up=False)
    assert w.next_directive(staging) is None  # issued once
    assert w.staged_report(2, "sum") is True
    assert w.next_directive(staging) is None  # not committed yet
    committed = state(2, rollout(2, RolloutPhase.COMMITTED))
    assert w.next_directive(committed) == Commit(2, DrainPolicy.ABORT)
    w.serving_report(2, "fp2")
    assert (w.serving_version, w.serving_checksum, w.fingerprint, w.staged) == (2, "sum", "fp2", None)
    assert w.next_directive(committed) is None


def test_an_overlap_commit_serves_the_new_version_while_the_old_one_retires():
    w = LocalWeights(serving_version=1, serving_checksum="s1", fingerprint="fp1")
    w.next_directive(state(1, rollout(2, RolloutPhase.STAGING)))
    w.staged_report(2, "sum")
    overlapping = replace(
        rollout(2, RolloutPhase.COMMITTED).value, drain=DrainPolicy.OVERLAP, drain_deadline=5.0
    )
    committed = state(2, Stored(overlapping, 1, 1, 0))
    assert w.next_directive(committed) == Commit(2, DrainPolicy.OVERLAP, 5.0)
    with pytest.raises(ProtocolError, match="not an older version"):
        w.serving_report(2, "fp2", retiring=2)
    w.serving_report(2, "fp2-staged", retiring=1)
    assert (w.serving_version, w.retiring, w.status(2)) == (2, 1, WorkerStatus.READY)
    assert w.retired_report(0, "fp2") is False  # not the version retiring
    assert w.retired_report(1, "fp2") is True
    assert (w.retiring, w.fingerprint) == (None, "fp2")
    assert w.retired_report(1, "fp2") is False  # once


def test_serving_a_version_never_committed_to_staged_weights_is_refused():
    w = LocalWeights(1, "s1", "fp1")
    with pytest.raises(ProtocolError, match="must stage v first"):
        w.serving_report(2, "forged")
    w.next_directive(state(1, rollout(2, RolloutPhase.STAGING)))
    w.staged_report(2, "sum")
    with pytest.raises(ProtocolError):  # staged but not committed
        w.serving_report(2, "early")
    assert w.serving_version == 1


def test_a_fence_voids_staging_and_forbids_claiming_the_version():
    w = LocalWeights(1, "s1", "fp1")
    w.next_directive(state(1, rollout(2, RolloutPhase.STAGING)))
    assert w.fence("lease expired") == Fenced("lease expired")
    assert w.staged_report(2, "sum") is False  # the late report is stale, not an error
    with pytest.raises(ProtocolError):
        w.serving_report(2, "forged")
    assert w.status(2) is WorkerStatus.LOADING
    catch_up = w.next_directive(state(2, rollout(2, RolloutPhase.COMMITTED)))
    assert catch_up == Stage(2, "/ckpt/2", DrainPolicy.ABORT, "sum", catch_up=True)


def test_a_swap_under_way_when_fenced_is_still_believed():
    w = LocalWeights(1, "s1", "fp1")
    w.next_directive(state(1, rollout(2, RolloutPhase.STAGING)))
    w.staged_report(2, "sum")
    assert isinstance(w.next_directive(state(2, rollout(2, RolloutPhase.COMMITTED))), Commit)
    w.fence("fenced for being slow")
    w.serving_report(2, "fp2")  # the engine had swapped before it saw the fence
    assert w.serving_version == 2


def test_an_aborted_rollout_is_dropped_once_and_released():
    w = LocalWeights(1, "s1", "fp1")
    w.next_directive(state(1, rollout(2, RolloutPhase.STAGING)))
    w.staged_report(2, "sum")
    aborted = state(1, rollout(2, RolloutPhase.ABORTED, "checksum mismatch"))
    assert w.next_directive(aborted) == Abort(2, "checksum mismatch")
    assert w.next_directive(aborted) is None
    assert w.released_report(2) is True and w.released_report(2) is False
    assert w.staged is None


def test_a_catch_up_overtaken_by_a_newer_commit_is_dropped_for_the_newer():
    w = LocalWeights(0, None, None)
    assert w.next_directive(state(2, rollout(2, RolloutPhase.COMMITTED))).version == 2
    newer = state(3, rollout(2, RolloutPhase.DONE), rollout(3, RolloutPhase.COMMITTED))
    assert w.next_directive(newer) == Abort(2, "superseded by v3")
    assert w.next_directive(newer) == Stage(3, "/ckpt/3", DrainPolicy.ABORT, "sum", catch_up=True)


def test_a_failed_version_is_not_staged_again_by_the_same_registration():
    w = LocalWeights(1, "s1", "fp1")
    staging = state(1, rollout(2, RolloutPhase.STAGING))
    w.next_directive(staging)
    assert w.failure_report(2, "oom") is True
    assert w.next_directive(staging) is None
    with pytest.raises(ProtocolError):
        w.failure_report(3, "never staged")


def test_reports_of_versions_never_directed_are_protocol_errors():
    w = LocalWeights(1, "s1", "fp1")
    with pytest.raises(ProtocolError):
        w.staged_report(2, "sum")
    w.serving_report(1, "fp1-remeasured")  # refreshing the fingerprint of what it serves is fine
    assert replace(w).fingerprint == "fp1-remeasured"
