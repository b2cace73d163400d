"""Coordinators as real `epochctl coordinator` processes: killed, paused past their lease, and cut
off by an etcd restart in the middle of a rollout. The etcd history (never compacted here) is the
witness: who wrote what, at which revision, and how many times the epoch moved."""

from __future__ import annotations

import contextlib
import signal

from fakes import FakeWorker
from harness import (
    CoordinatorProcess,
    cluster_state,
    decoded,
    key_history,
    run,
    start_request,
    wait_for_rollout,
    wait_until,
)

from epochserve.controlplane.admin.client import AdminClient
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.records import EpochRecord, RolloutRecord


async def wait_leader(etcd, coordinator_id: str, timeout: float = 15.0) -> int:
    """Until `coordinator_id` leads; returns the store revision at which that was seen."""
    seen: list[int] = []

    async def leads() -> bool:
        state = await cluster_state(etcd)
        seen[:] = [state.revision]
        return state.leader is not None and state.leader.value.coordinator_id == coordinator_id

    await wait_until(leads, timeout, f"{coordinator_id} to lead")
    return seen[0]


async def wait_staged(etcd, worker_ids, version: int) -> None:
    async def staged() -> bool:
        workers = (await cluster_state(etcd)).workers
        return all(w in workers and workers[w].value.staged_version == version for w in worker_ids)

    await wait_until(staged, 15, f"{worker_ids} to stage v{version}")


async def start_staging(etcd, stack, leader: CoordinatorProcess) -> FakeWorker:
    """Three workers; start v1 through `leader`; return once two staged and the third holds."""
    workers = [await stack.enter_async_context(FakeWorker(etcd, f"w{i}")) for i in range(3)]
    held = workers[2]
    held.stage_gate.clear()
    async with AdminClient(leader.address, _token()) as admin:
        await admin.start_rollout(start_request(1), timeout=10)
    await wait_staged(etcd, ["w0", "w1"], 1)
    await held.wait_staging(1)
    return held


def _token() -> str:
    from harness import TOKEN

    return TOKEN


def rollout_history(etcd, version: int) -> list[tuple[int, RolloutRecord]]:
    return decoded(run(key_history(etcd, Keyspace(etcd.cluster).rollout(version))), RolloutRecord)


def epoch_history(etcd) -> list[tuple[int, EpochRecord]]:
    return decoded(run(key_history(etcd, Keyspace(etcd.cluster).epoch())), EpochRecord)


async def leader_and_standby(etcd, tmp_path, started: list, *standby_flags: str):
    """coord-a, once it leads, then coord-b campaigning behind it (started in this order so that
    coord-a surely wins)."""
    a = CoordinatorProcess(etcd, "coord-a", tmp_path)
    started.append(a)
    await a.wait_serving()
    await wait_leader(etcd, "coord-a")
    b = CoordinatorProcess(etcd, "coord-b", tmp_path, *standby_flags)
    started.append(b)
    await b.wait_serving()
    await wait_until(_candidate(etcd, "coord-b"), 15, "coord-b to campaign")
    return a, b


def test_killed_leader_is_replaced_and_the_standby_finishes_the_rollout(etcd, tmp_path):
    started: list[CoordinatorProcess] = []

    async def scenario():
        a, _ = await leader_and_standby(etcd, tmp_path, started)
        async with contextlib.AsyncExitStack() as stack:
            held = await start_staging(etcd, stack, a)
            a.signal(signal.SIGKILL)  # STAGING is written, the commit is not
            held.stage_gate.set()
            await wait_leader(etcd, "coord-b")
            return await wait_for_rollout(etcd, 1, "DONE")

    try:
        record = run(scenario())
    finally:
        for process in started:
            process.stop()
    assert record.updated_by == "coord-b"
    phases = [(r.phase.value, r.updated_by) for _, r in rollout_history(etcd, 1)]
    assert phases == [("STAGING", "coord-a"), ("COMMITTED", "coord-b"), ("DONE", "coord-b")]
    epochs = [(e.version, e.committed_by) for _, e in epoch_history(etcd)]
    assert epochs == [(1, "coord-b")]  # committed exactly once


def test_paused_leader_cannot_write_after_losing_the_lead(etcd, tmp_path):
    """coord-a is paused past its TTL; coord-b is elected and then paused too, so that when
    coord-a resumes the commit is due and nobody else has made it: coord-a must not land it."""
    started: list[CoordinatorProcess] = []

    async def scenario():
        a, b = await leader_and_standby(etcd, tmp_path, started, "--lease-ttl=30")  # b outlives its pause
        async with contextlib.AsyncExitStack() as stack:
            held = await start_staging(etcd, stack, a)
            a.signal(signal.SIGSTOP)
            lost_lead_at = await wait_leader(etcd, "coord-b")
            b.signal(signal.SIGSTOP)
            held.stage_gate.set()
            await wait_staged(etcd, ["w0", "w1", "w2"], 1)  # the commit is due now
            a.signal(signal.SIGCONT)
            await wait_until(_logged(a, "coord-a steps down"), 15, "coord-a to step down")
            b.signal(signal.SIGCONT)
            record = await wait_for_rollout(etcd, 1, "DONE")
            await wait_until(_candidate(etcd, "coord-a"), 15, "coord-a to campaign again")
            return lost_lead_at, record, a.process.poll()

    try:
        lost_lead_at, record, a_exit = run(scenario())
    finally:
        for process in started:
            process.stop()
    assert a_exit is None  # coord-a lives on, as a follower
    assert record.updated_by == "coord-b"
    late_writes = [
        (rev, r.updated_by)
        for rev, r in rollout_history(etcd, 1)
        if rev > lost_lead_at and r.updated_by == "coord-a"
    ]
    assert late_writes == []
    assert [(e.version, e.committed_by) for _, e in epoch_history(etcd)] == [(1, "coord-b")]


def test_coordinator_survives_an_etcd_restart_mid_rollout(private_etcd, tmp_path):
    etcd = private_etcd
    a = CoordinatorProcess(etcd, "coord-a", tmp_path, "--etcd-timeout=1")
    try:

        async def scenario():
            await a.wait_serving()
            await wait_leader(etcd, "coord-a")
            async with contextlib.AsyncExitStack() as stack:
                held = await start_staging(etcd, stack, a)
                etcd.server.stop()
                # down for longer than a lease: every session is lost and must be rebuilt
                await wait_until(_logged(a, "steps down"), 15, "coord-a to lose its session")
                etcd.server.start()
                held.stage_gate.set()
                await wait_leader(etcd, "coord-a", timeout=20)
                return await wait_for_rollout(etcd, 1, "DONE", timeout=30)

        record = run(scenario(), timeout=90)
    finally:
        a.stop()
    assert record.updated_by == "coord-a" and record.reason == ""
    assert [e.version for _, e in epoch_history(etcd)] == [1]
    assert [r.phase.value for _, r in rollout_history(etcd, 1)] == ["STAGING", "COMMITTED", "DONE"]


def _logged(process: CoordinatorProcess, text: str):
    async def check() -> bool:
        return text in process.log()

    return check


def _candidate(etcd, coordinator_id: str):
    async def check() -> bool:
        state = await cluster_state(etcd)
        return any(c.value.coordinator_id == coordinator_id for c in state.candidates)

    return check
