"""The rollout state machine end to end (docs/design.md §5): an in-process coordinator, protocol-level
fake workers and routers, a real etcd. Each test asserts the records, the epoch and what every
participant saw."""

from __future__ import annotations

import contextlib

import pytest
from fakes import FakeRouter, FakeWorker
from harness import (
    cluster_state,
    decoded,
    key_history,
    leading,
    run,
    start_request,
    wait_for_rollout,
    wait_until,
)

from epochserve.controlplane.participants.directives import Abort, Commit, Stage
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.records import EpochRecord, WorkerStatus
from epochserve.errors import ProtocolError
from epochserve.proto.v1 import admin_pb2 as pb


def test_happy_path_stages_commits_swaps_and_finishes(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            workers = [await stack.enter_async_context(FakeWorker(etcd, f"w{i}")) for i in range(3)]
            routers = [await stack.enter_async_context(FakeRouter(etcd, f"r{i}")) for i in range(2)]
            async with coordinator.admin() as admin:
                started = await admin.start_rollout(
                    start_request(1, manifest_checksum="sum-good"), timeout=10
                )
            assert started.phase == pb.ROLLOUT_PHASE_STAGING
            record = await wait_for_rollout(etcd, 1, "DONE")
            state = await cluster_state(etcd)
            return record, state, workers, routers

    record, state, workers, routers = run(scenario())
    assert record.manifest_checksum == "sum-good" and record.reason == "" and record.fenced_workers == ()
    assert state.committed_version == 1
    for w in workers:
        assert [type(d) for d in w.seen] == [Stage, Commit]
        assert w.seen[0] == Stage(1, "/ckpt/v1", w.seen[0].drain, "sum-good", catch_up=False)
        stored = state.workers[w.worker_id].value
        assert (stored.serving_version, stored.serving_checksum, stored.fingerprint) == (
            1,
            "sum-good",
            "fp-1",
        )
        assert stored.status is WorkerStatus.READY and stored.staged_version is None
    for r in routers:
        assert r.epochs == [0, 1]  # v-1 then v, nothing else
        assert state.routers[r.router_id].value.acked_epoch == 1
    epochs = run(key_history(etcd, Keyspace(etcd.cluster).epoch()))
    assert [e.version for _, e in decoded(epochs, EpochRecord)] == [1]


@pytest.mark.parametrize("expected", [None, "sum-good"])
def test_wrong_checksum_aborts_and_releases_staged_weights(etcd, expected):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            good = [await stack.enter_async_context(FakeWorker(etcd, f"w{i}")) for i in range(2)]
            bad = await stack.enter_async_context(FakeWorker(etcd, "w-bad", checksum="sum-corrupt"))
            workers = [*good, bad]
            for w in workers:
                w.stage_gate.clear()
            async with coordinator.admin() as admin:
                await admin.start_rollout(start_request(1, manifest_checksum=expected), timeout=10)
            for w in workers:  # all of them are staging when the mismatch shows
                await w.wait_staging(1)
            for w in workers:
                w.stage_gate.set()
            record = await wait_for_rollout(etcd, 1, "ABORTED")
            for w in workers:  # each participant sees the abort and frees its buffer
                await w.wait_seen(Abort(1, record.reason))
                await w.participant.flush(timeout=5)
            return record, await cluster_state(etcd), workers

    record, state, workers = run(scenario())
    assert "checksum mismatch" in record.reason and "w-bad=sum-corrupt" in record.reason
    assert state.committed_version == 0 and state.epoch is None
    for w in workers:
        assert w.of_kind(Abort) == [Abort(1, record.reason)]
        assert not w.of_kind(Commit)
        stored = state.workers[w.worker_id].value
        assert stored.serving_version == 0 and stored.staged_version is None


def test_stage_failure_aborts_with_the_reason(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            await stack.enter_async_context(FakeWorker(etcd, "w0"))
            failing = await stack.enter_async_context(FakeWorker(etcd, "w1", fail_stage="CUDA out of memory"))
            async with coordinator.admin() as admin:
                await admin.start_rollout(start_request(1), timeout=10)
            return await wait_for_rollout(etcd, 1, "ABORTED"), failing

    record, failing = run(scenario())
    assert record.reason == "worker w1 failed to stage v1: CUDA out of memory"
    assert not failing.of_kind(Commit)


def test_stage_timeout_aborts_and_leaves_the_epoch(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            await stack.enter_async_context(FakeWorker(etcd, "w0"))
            slow = await stack.enter_async_context(FakeWorker(etcd, "w-slow"))
            slow.stage_gate.clear()  # never finishes staging
            async with coordinator.admin() as admin:
                await admin.start_rollout(start_request(1, stage_timeout_seconds=1.0), timeout=10)
            record = await wait_for_rollout(etcd, 1, "ABORTED")
            slow.stage_gate.set()  # staging finishes too late: the report is stale, then the abort
            await slow.wait_seen(Abort(1, record.reason))
            return record, await cluster_state(etcd), slow

    record, state, slow = run(scenario())
    assert record.reason == "stage timeout: workers ['w-slow'] did not stage v1 in time"
    assert state.committed_version == 0
    assert slow.stale_reports == [1] and not slow.of_kind(Commit)


def test_worker_that_never_swaps_is_fenced_then_catches_up(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            await stack.enter_async_context(FakeWorker(etcd, "w0"))
            stuck = await stack.enter_async_context(FakeWorker(etcd, "w-stuck", ignore_commits=True))
            async with coordinator.admin() as admin:
                await admin.start_rollout(start_request(1, commit_timeout_seconds=1.0), timeout=10)
            record = await wait_for_rollout(etcd, 1, "DONE")
            await stuck.participant.wait_registered(timeout=10)
            await wait_for_serving(etcd, "w-stuck", 1)
            return record, stuck

    record, stuck = run(scenario())
    assert record.fenced_workers == ("w-stuck",)
    kinds = [type(d).__name__ for d in stuck.seen]
    # staged and committed with the others, never swapped, fenced, then loaded v1 again to rejoin
    assert kinds == ["Stage", "Commit", "Fenced", "Stage", "Commit"]
    assert stuck.seen[3].catch_up is True and stuck.participant.serving_version == 1


async def wait_for_serving(etcd, worker_id: str, version: int) -> None:
    async def serving() -> bool:
        w = (await cluster_state(etcd)).workers.get(worker_id)
        return w is not None and w.value.serving_version == version and w.value.status is WorkerStatus.READY

    await wait_until(serving, 15, f"{worker_id} to serve v{version}")


def test_late_worker_registers_loading_and_catches_up_before_ready(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            await stack.enter_async_context(FakeWorker(etcd, "w0"))
            async with coordinator.admin() as admin:
                await admin.start_rollout(start_request(1), timeout=10)
            await wait_for_rollout(etcd, 1, "DONE")
            late = FakeWorker(etcd, "w-late")
            late.stage_gate.clear()
            await stack.enter_async_context(late)
            first = (await cluster_state(etcd)).workers["w-late"].value
            late.stage_gate.set()
            await wait_for_serving(etcd, "w-late", 1)
            return first, late

    first, late = run(scenario())
    assert (first.status, first.serving_version) == (WorkerStatus.LOADING, 0)
    assert [type(d) for d in late.seen] == [Stage, Commit] and late.seen[0].catch_up is True


def test_worker_whose_lease_expires_during_staging_is_left_behind(etcd, etcd_proxy):
    """A partition cuts one worker off etcd mid-staging: its lease expires, the rollout commits
    without it, it cannot claim v without loading it, and after the partition heals it registers
    again, loads v and serves it."""
    cut_off = EtcdConfig((etcd_proxy.endpoint,), request_timeout=1.0)

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            for i in range(2):
                await stack.enter_async_context(FakeWorker(etcd, f"w{i}"))
            lost = await stack.enter_async_context(FakeWorker(etcd, "w-lost", etcd_config=cut_off))
            lost.stage_gate.clear()
            async with coordinator.admin() as admin:
                await admin.start_rollout(start_request(1), timeout=10)
            await wait_until(_async(lambda: bool(lost.of_kind(Stage))), 10, "w-lost to start staging")
            etcd_proxy.cut()
            record = await wait_for_rollout(etcd, 1, "DONE")
            await wait_until(_async(lambda: not lost.participant.is_registered), 10, "w-lost to notice")
            with pytest.raises(ProtocolError):
                await lost.participant.report_serving(1, "fp-forged")
            assert not lost.participant.can_accept_work
            lost.stage_gate.set()
            etcd_proxy.heal()
            await wait_for_serving(etcd, "w-lost", 1)
            assert lost.participant.can_accept_work
            return record, lost

    record, lost = run(scenario())
    assert record.fenced_workers == ()  # nobody fenced it: its lease simply expired
    assert [type(d).__name__ for d in lost.seen] == ["Stage", "Fenced", "Stage", "Commit"]
    assert lost.stale_reports == [1] and lost.seen[2].catch_up is True


def _async(predicate):
    async def check() -> bool:
        return predicate()

    return check
