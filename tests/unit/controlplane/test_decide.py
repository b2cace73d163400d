"""Every branch of the rollout state machine (coordinator/decide.py), on hand-built cluster states."""

from __future__ import annotations

from dataclasses import replace

from epochserve.controlplane.coordinator.decide import (
    AbortRollout,
    CommitRollout,
    FenceMembers,
    FinishRollout,
    Wait,
    next_step,
)
from epochserve.controlplane.store.keyspace import KeyKind
from epochserve.controlplane.store.records import (
    DrainPolicy,
    EpochRecord,
    RolloutPhase,
    RolloutRecord,
    RouterRecord,
    WorkerRecord,
    WorkerStatus,
)
from epochserve.controlplane.store.state import ClusterState, Stored

NOW = 1000.0
DEADLINE = 1100.0


def staging(checksum: str | None = None) -> RolloutRecord:
    return RolloutRecord(
        7, "/ckpt/v7", DrainPolicy.FINISH, RolloutPhase.STAGING, 900.0, 900.0, "c0", 60.0, checksum, DEADLINE
    )


def committed(checksum: str | None = "sum") -> RolloutRecord:
    return replace(staging(checksum), phase=RolloutPhase.COMMITTED)


def worker(worker_id: str, serving: int = 6, staged: str | None = None, **fields) -> WorkerRecord:
    base = WorkerRecord(
        worker_id, "i", "127.0.0.1:1", 1, 8, WorkerStatus.READY, serving, "sum-6", "fp",
        staged_version=7 if staged else None, staged_checksum=staged,
    )  # fmt: skip
    return replace(base, **fields)


def state(workers=(), routers=(), epoch: int = 6, invalid=None) -> ClusterState:
    def stored(value):
        return Stored(value, 1, 1, 0)

    return ClusterState(
        revision=10,
        epoch=stored(EpochRecord(epoch, 1.0, "c0")) if epoch else None,
        rollouts={},
        workers={w.worker_id: stored(w) for w in workers},
        routers={r.router_id: stored(r) for r in routers},
        candidates=(),
        invalid=invalid or {},
    )


def router(router_id: str, acked: int) -> RouterRecord:
    return RouterRecord(router_id, "i", "127.0.0.1:2", acked)


class TestStaging:
    def test_commits_when_every_ready_worker_staged_the_same_checksum(self):
        s = state([worker("a", staged="sum"), worker("b", staged="sum")])
        assert next_step(staging(), s, NOW) == CommitRollout("sum")

    def test_loading_workers_are_not_waited_for(self):
        s = state([worker("a", staged="sum"), worker("b", status=WorkerStatus.LOADING, serving=3)])
        assert next_step(staging(), s, NOW) == CommitRollout("sum")

    def test_no_ready_worker_commits_with_the_requested_checksum(self):
        assert next_step(staging("sum"), state([]), NOW) == CommitRollout("sum")
        assert next_step(staging(), state([]), NOW) == CommitRollout(None)

    def test_waits_until_the_deadline_for_the_missing(self):
        s = state([worker("a", staged="sum"), worker("b")])
        assert next_step(staging(), s, NOW) == Wait(DEADLINE)

    def test_aborts_at_the_deadline_naming_the_missing(self):
        s = state([worker("a", staged="sum"), worker("b")])
        assert next_step(staging(), s, DEADLINE) == AbortRollout(
            "stage timeout: workers ['b'] did not stage v7 in time"
        )

    def test_disagreeing_workers_abort_at_once(self):
        s = state([worker("a", staged="sum"), worker("b", staged="other"), worker("c")])
        assert next_step(staging(), s, NOW) == AbortRollout(
            "manifest checksum mismatch for v7: staged a=sum, b=other"
        )

    def test_a_worker_off_the_expected_checksum_aborts(self):
        s = state([worker("a", staged="other")])
        assert next_step(staging("sum"), s, NOW) == AbortRollout(
            "manifest checksum mismatch for v7: staged a=other, expected sum"
        )

    def test_a_stage_failure_aborts_with_its_reason(self):
        s = state([worker("a", staged="sum"), worker("b", failed_version=7, failure_reason="disk full")])
        assert next_step(staging(), s, NOW) == AbortRollout("worker b failed to stage v7: disk full")

    def test_a_failure_of_another_version_is_ignored(self):
        s = state([worker("a", staged="sum", failed_version=5, failure_reason="old")])
        assert next_step(staging(), s, NOW) == CommitRollout("sum")

    def test_an_unreadable_worker_record_blocks_until_the_deadline(self):
        s = state([worker("a", staged="sum")], invalid={(KeyKind.WORKER, "x"): "not JSON"})
        assert next_step(staging(), s, NOW) == Wait(DEADLINE)
        assert next_step(staging(), s, DEADLINE) == AbortRollout(
            "stage timeout: worker records ['x'] stayed unreadable"
        )


class TestCommitted:
    def test_finishes_when_all_serve_and_all_routers_acked(self):
        s = state([worker("a", serving=7, serving_checksum="sum")], [router("r", 7)], epoch=7)
        assert next_step(committed(), s, NOW) == FinishRollout()

    def test_waits_for_a_lagging_worker_or_router(self):
        lagging_worker = state([worker("a", serving=6)], [router("r", 7)], epoch=7)
        lagging_router = state([worker("a", serving=7, serving_checksum="sum")], [router("r", 6)], epoch=7)
        assert next_step(committed(), lagging_worker, NOW) == Wait(DEADLINE)
        assert next_step(committed(), lagging_router, NOW) == Wait(DEADLINE)

    def test_fences_every_laggard_at_the_deadline(self):
        s = state(
            [worker("a", serving=6), worker("b", serving=7, serving_checksum="sum")],
            [router("r", 6)],
            epoch=7,
        )
        step = next_step(committed(), s, DEADLINE)
        assert step == FenceMembers(("a",), ("r",), "not serving / not acking v7 within the commit timeout")

    def test_fences_at_once_a_worker_serving_other_weights(self):
        s = state([worker("a", serving=7, serving_checksum="forged")], epoch=7)
        assert next_step(committed(), s, NOW) == FenceMembers(
            ("a",), (), "workers ['a'] failed to swap to v7 or serve other weights"
        )

    def test_fences_at_once_a_worker_whose_swap_failed(self):
        s = state([worker("a", failed_version=7, failure_reason="oom")], epoch=7)
        assert isinstance(next_step(committed(), s, NOW), FenceMembers)

    def test_a_worker_still_retiring_the_old_version_holds_done_back(self):
        overlapping = worker("a", serving=7, serving_checksum="sum", retiring_version=6)
        s = state([overlapping], [router("r", 7)], epoch=7)
        assert next_step(committed(), s, NOW) == Wait(DEADLINE)
        assert next_step(committed(), s, DEADLINE) == FenceMembers(
            ("a",), (), "not serving / not acking v7 within the commit timeout"
        )
        retired = state([replace(overlapping, retiring_version=None)], [router("r", 7)], epoch=7)
        assert next_step(committed(), retired, NOW) == FinishRollout()

    def test_without_an_agreed_checksum_serving_the_version_is_enough(self):
        s = state([worker("a", serving=7, serving_checksum=None)], epoch=7)
        assert next_step(committed(checksum=None), s, NOW) == FinishRollout()


def test_terminal_rollouts_need_nothing():
    for phase in (RolloutPhase.DONE, RolloutPhase.ABORTED):
        done = replace(staging(), phase=phase, phase_deadline=None)
        assert next_step(done, state([worker("a")]), NOW) == Wait(None)
