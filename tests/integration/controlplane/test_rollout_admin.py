"""Rollouts as the Admin API sees them: who may start what (versions strictly increase, one in
flight, each version once), aborts, a long history of rollouts, the watch stream, and followers
forwarding to the leader. In-process coordinators, fake participants, a real etcd."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from fakes import FakeRouter, FakeWorker
from harness import (
    InProcessCoordinator,
    coordinator_config,
    decoded,
    key_history,
    leading,
    run,
    start_request,
    wait_for_rollout,
    wait_until,
)

from epochserve.controlplane.participants.directives import Abort, Commit
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.records import EpochRecord, RolloutPhase
from epochserve.proto.v1 import admin_pb2 as pb


def test_start_rollout_admission_rules(etcd):
    """Concurrent starts of one version: exactly one wins, the rest get ALREADY_EXISTS; a version
    at or below the epoch, or a second rollout in flight, gets FAILED_PRECONDITION."""

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            worker = await stack.enter_async_context(FakeWorker(etcd, "w0"))
            admin = await stack.enter_async_context(coordinator.admin())
            worker.stage_gate.clear()
            results = await asyncio.gather(
                *[admin.start_rollout(start_request(3), timeout=10) for _ in range(6)], return_exceptions=True
            )
            in_flight = await _code_of(admin.start_rollout(start_request(4), timeout=10))
            worker.stage_gate.set()
            await wait_for_rollout(etcd, 3, "DONE")
            again = await _code_of(admin.start_rollout(start_request(3, source="nccl"), timeout=10))
            below = await _code_of(admin.start_rollout(start_request(2), timeout=10))
            zero = await _code_of(admin.start_rollout(start_request(0), timeout=10))
            return results, in_flight, again, below, zero

    results, in_flight, again, below, zero = run(scenario())
    accepted = [r for r in results if isinstance(r, pb.Rollout)]
    refused = sorted(r.code().name for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert len(accepted) == 1 and refused == ["ALREADY_EXISTS"] * 5
    assert in_flight == grpc.StatusCode.FAILED_PRECONDITION
    assert again == grpc.StatusCode.ALREADY_EXISTS
    assert below == grpc.StatusCode.FAILED_PRECONDITION
    assert zero == grpc.StatusCode.INVALID_ARGUMENT


def test_versions_strictly_increase_and_abort_only_before_commit(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            worker = await stack.enter_async_context(FakeWorker(etcd, "w0"))
            admin = await stack.enter_async_context(coordinator.admin())
            worker.stage_gate.clear()
            await admin.start_rollout(start_request(5), timeout=10)
            await worker.wait_staging(5)
            aborted = await admin.abort_rollout(5, "operator changed their mind", timeout=10)
            again = await admin.abort_rollout(5, "", timeout=10)
            below_tried = await _code_of(admin.start_rollout(start_request(4), timeout=10))
            worker.stage_gate.set()
            await admin.start_rollout(start_request(6), timeout=10)
            await wait_for_rollout(etcd, 6, "DONE")
            late_abort = await _code_of(admin.abort_rollout(6, "", timeout=10))
            unknown = await _code_of(admin.abort_rollout(99, "", timeout=10))
            missing = await _code_of(admin.get_rollout(99, timeout=10))
            invalid = await _code_of(
                admin.start_rollout(pb.StartRolloutRequest(version=7, source="x"), timeout=10)
            )
            return aborted, again, below_tried, late_abort, unknown, missing, invalid, worker

    aborted, again, below_tried, late_abort, unknown, missing, invalid, worker = run(scenario())
    assert aborted.phase == pb.ROLLOUT_PHASE_ABORTED and aborted.reason == "operator changed their mind"
    assert again == aborted  # idempotent
    assert below_tried == grpc.StatusCode.FAILED_PRECONDITION
    assert late_abort == grpc.StatusCode.FAILED_PRECONDITION
    assert unknown == missing == grpc.StatusCode.NOT_FOUND
    assert invalid == grpc.StatusCode.INVALID_ARGUMENT  # no drain policy
    assert worker.of_kind(Abort) == [Abort(5, "operator changed their mind")]
    assert worker.participant.serving_version == 6


def test_an_overlap_rollout_is_done_only_once_the_old_version_retired(etcd):
    """drain=overlap: a worker serves v at once while v-1 retires beside it; the rollout stays
    COMMITTED (a second one is refused as in flight) until the worker reports v-1 retired. A drain
    deadline must come before the commit timeout, which would fence a worker still draining."""

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            worker = await stack.enter_async_context(FakeWorker(etcd, "w0", serving_version=0))
            admin = await stack.enter_async_context(coordinator.admin())
            late_deadline = await _code_of(
                admin.start_rollout(
                    start_request(
                        3, pb.DRAIN_POLICY_OVERLAP, drain_deadline_seconds=9, commit_timeout_seconds=9
                    ),
                    timeout=10,
                )
            )
            request = start_request(3, pb.DRAIN_POLICY_OVERLAP, drain_deadline_seconds=5)
            started = await admin.start_rollout(request, timeout=10)
            await wait_for_rollout(etcd, 3, "COMMITTED")

            async def retiring() -> bool:
                workers = (await admin.get_rollout(3, timeout=10)).workers
                return bool(workers) and workers[0].HasField("retiring_version")

            await wait_until(retiring, 10, "w0 to serve v3 with v0 retiring")
            overlapping = await admin.get_rollout(3, timeout=10)
            second = await _code_of(admin.start_rollout(start_request(4), timeout=10))
            worker.retire_gate.set()
            await wait_for_rollout(etcd, 3, "DONE")

            async def reported() -> bool:
                workers = (await admin.get_rollout(3, timeout=10)).workers
                return workers[0].last_drain.HasField("retire_seconds")

            await wait_until(reported, 10, "w0's drain report")
            done = await admin.get_rollout(3, timeout=10)
            return late_deadline, started, overlapping, second, done

    late_deadline, started, overlapping, second, done = run(scenario())
    assert late_deadline == grpc.StatusCode.INVALID_ARGUMENT
    assert (started.drain, started.drain_deadline_seconds) == (pb.DRAIN_POLICY_OVERLAP, 5.0)
    (w,) = overlapping.workers
    assert (w.serving_version, w.retiring_version, overlapping.rollout.phase) == (
        3,
        0,
        pb.ROLLOUT_PHASE_COMMITTED,
    )
    assert second == grpc.StatusCode.FAILED_PRECONDITION  # one rollout in flight until v0 retired
    (w,) = done.workers
    assert not w.HasField("retiring_version") and w.fingerprint == "fp-3"
    assert (w.last_drain.version, w.last_drain.retire_seconds, w.last_drain.finished_previous) == (3, 2.5, 4)


def test_twenty_rollouts_every_watcher_sees_a_strictly_increasing_epoch(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            workers = [await stack.enter_async_context(FakeWorker(etcd, f"w{i}")) for i in range(3)]
            routers = [await stack.enter_async_context(FakeRouter(etcd, f"r{i}")) for i in range(3)]
            admin = await stack.enter_async_context(coordinator.admin())
            for v in range(1, 21):
                bad = v % 7 == 0  # every seventh rollout aborts on a checksum mismatch
                workers[0].checksum = "sum-corrupt" if bad else "sum-good"
                await admin.start_rollout(start_request(v), timeout=10)
                await wait_for_rollout(etcd, v, "ABORTED" if bad else "DONE")
            return workers, routers

    workers, routers = run(scenario(), timeout=120)
    committed = [v for v in range(1, 21) if v % 7]
    for r in routers:
        assert r.epochs[0] == 0 and r.epochs[-1] == 20
        assert all(a < b for a, b in zip(r.epochs, r.epochs[1:], strict=False)), r.epochs
        assert set(r.epochs) <= {0, *committed}
    for w in workers:
        commits = [d.version for d in w.of_kind(Commit)]
        assert commits == committed
    history = run(key_history(etcd, Keyspace(etcd.cluster).epoch()))
    assert [e.version for _, e in decoded(history, EpochRecord)] == committed


def test_watch_rollout_streams_each_phase_in_order(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            worker = await stack.enter_async_context(FakeWorker(etcd, "w0"))
            await stack.enter_async_context(FakeRouter(etcd, "r0"))
            admin = await stack.enter_async_context(coordinator.admin())
            worker.stage_gate.clear()
            await admin.start_rollout(start_request(1), timeout=10)
            statuses = []
            async for status in admin.watch_rollout(1, timeout=20):
                statuses.append(status)
                worker.stage_gate.set()
            return statuses

    statuses = run(scenario())
    phases = [s.rollout.phase for s in statuses]
    assert phases[0] == pb.ROLLOUT_PHASE_STAGING and phases[-1] == pb.ROLLOUT_PHASE_DONE
    assert pb.ROLLOUT_PHASE_COMMITTED in phases and phases == sorted(phases)
    revisions = [s.revision for s in statuses]
    assert revisions == sorted(set(revisions))
    assert (statuses[-1].num_serving, statuses[-1].num_acked, statuses[-1].committed_epoch) == (1, 1, 1)


def test_follower_forwards_start_to_the_leader(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await leading(stack, etcd, coordinator_id="c-a")
            follower = await stack.enter_async_context(
                InProcessCoordinator(coordinator_config(etcd, coordinator_id="c-b"))
            )
            await stack.enter_async_context(FakeWorker(etcd, "w0"))
            admin = await stack.enter_async_context(follower.admin())
            started = await admin.start_rollout(start_request(1), timeout=10)
            listing = await admin.list_workers(timeout=10)
            record = await wait_for_rollout(etcd, 1, "DONE")
            return started, listing, record, follower.coordinator.is_leader

    started, listing, record, follower_leads = run(scenario())
    assert not follower_leads
    assert started.updated_by == "c-a" and record.updated_by == "c-a"
    assert (listing.leader_id, [w.worker_id for w in listing.workers]) == ("c-a", ["w0"])
    assert RolloutPhase(record.phase) is RolloutPhase.DONE


async def _code_of(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK
