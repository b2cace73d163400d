"""The PolicyRollout logic (drive_rollout, finalize_rollout) over the real Admin gRPC API: an
in-process coordinator on a real etcd, protocol-level fake workers and routers, and the operator's
own GrpcConnector. Only the Kubernetes API server is left out (its StatusSink records instead)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from fakes import FakeWorker
from fixtures.etcd import EtcdCluster
from fixtures.policy_rollouts import RecordingSink, policy_rollout
from harness import (
    LEASE_TTL,
    TOKEN,
    InProcessCoordinator,
    cluster_state,
    coordinator_config,
    leading,
    run,
    wait_for_rollout,
)

from epochserve.controlplane.participants.directives import Abort
from epochserve.controlplane.participants.router import RouterParticipant
from epochserve.controlplane.store.records import DrainPolicy
from epochserve.errors import RolloutBusyError
from epochserve.net import free_port
from epochserve.operators.rollouts.admin import (
    AdminAuthError,
    AdminTarget,
    AdminUnavailableError,
    RolloutAdmin,
)
from epochserve.operators.rollouts.connect import GrpcConnector
from epochserve.operators.rollouts.driver import FinalizeOutcome, drive_rollout, finalize_rollout
from epochserve.operators.rollouts.grpc_admin import ABORT_REASON

WAIT_S = 15.0  # seconds any one phase may take to show in the status (2 shared CPU cores)


class HeldRouter:
    """A registered router that acks a committed epoch only when told: the rollout stays COMMITTED
    (DONE waits for every live router) until the test calls `ack`."""

    def __init__(self, etcd: EtcdCluster, router_id: str) -> None:
        address = f"127.0.0.1:{free_port()}"
        self.participant = RouterParticipant(
            etcd.config, etcd.cluster, router_id, address, lease_ttl=LEASE_TTL
        )

    async def __aenter__(self) -> HeldRouter:
        await self.participant.start(timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.participant.close()

    async def ack(self, version: int) -> None:
        await self.participant.wait_view(lambda view: view.committed_epoch >= version, WAIT_S)
        await self.participant.ack_epoch(version)


async def _session(stack: contextlib.AsyncExitStack, address: str, token: str = TOKEN) -> RolloutAdmin:
    connector = GrpcConnector(call_timeout_s=10.0, watch_timeout_s=60.0)
    return await stack.enter_async_context(connector.connect(AdminTarget(address, token)))


async def _gated_workers(stack: contextlib.AsyncExitStack, etcd: EtcdCluster, n: int) -> list[FakeWorker]:
    """`n` fake workers that hold staging until the test opens their stage_gate."""
    workers = [await stack.enter_async_context(FakeWorker(etcd, f"w{i}")) for i in range(n)]
    for worker in workers:
        worker.stage_gate.clear()
    return workers


def _phase(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") == name


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str, int]]:
    """type -> (status, reason, observedGeneration) of each condition."""
    return {c["type"]: (c["status"], c["reason"], c["observedGeneration"]) for c in status["conditions"]}


def test_phases_mirror_the_rollout_with_per_worker_progress(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            w0, w1 = await _gated_workers(stack, etcd, 2)
            router = await stack.enter_async_context(HeldRouter(etcd, "r0"))
            admin, sink = await _session(stack, coordinator.address), RecordingSink()
            task = asyncio.create_task(drive_rollout(admin, policy_rollout(generation=3), sink, {}))
            await sink.wait_for(lambda s: s.get("phase") == "Staging" and len(s["workers"]) == 2, WAIT_S)
            w0.stage_gate.set()
            await sink.wait_for(lambda s: sink.worker("w0").get("state") == "Staged", WAIT_S)
            one_staged = sink.current["workers"]
            w1.stage_gate.set()
            await sink.wait_for(_phase("Committed"), WAIT_S)
            committed = _conditions(sink.current)
            await router.ack(2)
            final = await asyncio.wait_for(task, WAIT_S)
            return final, sink, one_staged, committed, await wait_for_rollout(etcd, 2, "DONE")

    final, sink, one_staged, committed, record = run(scenario())
    assert final == "Done"
    assert sink.phases == ["Pending", "Staging", "Committed", "Done"]
    assert one_staged == [
        {"id": "w0", "state": "Staged", "stagedVersion": 2, "servingVersion": 0},
        {"id": "w1", "state": "Staging", "servingVersion": 0},
    ]
    assert committed["Committed"][:2] == ("True", "Committed") and committed["Complete"][0] == "False"
    assert [(w["state"], w["servingVersion"]) for w in sink.current["workers"]] == [("Serving", 2)] * 2
    assert _conditions(sink.current) == {
        "Accepted": ("True", "Started", 3),
        "Committed": ("True", "Done", 3),
        "Complete": ("True", "Done", 3),
    }
    assert sink.current["observedGeneration"] == 3
    assert (record.source, record.drain) == ("/models/v2", DrainPolicy.ABORT)


def test_delete_before_commit_aborts_the_rollout(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            (worker,) = await _gated_workers(stack, etcd, 1)
            admin, sink = await _session(stack, coordinator.address), RecordingSink()
            task = asyncio.create_task(drive_rollout(admin, policy_rollout(), sink, {}))
            await sink.wait_for(_phase("Staging"), WAIT_S)
            outcome = await finalize_rollout(admin, policy_rollout(), sink.current)
            worker.stage_gate.set()  # it stages too late, then follows the abort
            await worker.wait_seen(Abort(2, ABORT_REASON))
            final = await asyncio.wait_for(task, WAIT_S)
            return outcome, final, sink, await cluster_state(etcd)

    outcome, final, sink, state = run(scenario())
    assert outcome is FinalizeOutcome.ABORTED
    assert final == "Aborted" and sink.current["phase"] == "Aborted"
    assert sink.current["message"] == ABORT_REASON
    assert _conditions(sink.current)["Committed"][:2] == ("False", "Aborted")
    record = state.rollouts[2].value
    assert (record.phase, record.reason) == ("ABORTED", ABORT_REASON)
    assert state.committed_version == 0  # every worker keeps serving what it served


@pytest.mark.parametrize("finished", [False, True], ids=["committed", "done"])
def test_delete_after_commit_keeps_the_rollout(etcd, finished):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            await stack.enter_async_context(FakeWorker(etcd, "w0"))
            router = await stack.enter_async_context(HeldRouter(etcd, "r0"))
            admin, sink = await _session(stack, coordinator.address), RecordingSink()
            task = asyncio.create_task(drive_rollout(admin, policy_rollout(), sink, {}))
            await sink.wait_for(_phase("Committed"), WAIT_S)
            if finished:
                await router.ack(2)
                assert await asyncio.wait_for(task, WAIT_S) == "Done"
            outcome = await finalize_rollout(admin, policy_rollout(), sink.current)
            if not finished:  # the rollout goes on without its PolicyRollout
                await router.ack(2)
                assert await asyncio.wait_for(task, WAIT_S) == "Done"
            return outcome, await cluster_state(etcd)

    outcome, state = run(scenario())
    assert outcome is FinalizeOutcome.KEPT_COMMITTED
    assert state.rollouts[2].value.phase == "DONE" and state.committed_version == 2


def test_busy_waits_and_retries_while_a_version_below_the_epoch_is_rejected_via_a_follower(etcd):
    """Both are FAILED_PRECONDITION; the coordinator's reason trailer tells them apart, and a
    follower forwarding the call to the leader keeps it."""

    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            await leading(stack, etcd, coordinator_id="c-leader")
            follower = await stack.enter_async_context(
                InProcessCoordinator(coordinator_config(etcd, coordinator_id="c-follower"))
            )
            (worker,) = await _gated_workers(stack, etcd, 1)
            admin = await _session(stack, follower.address)
            first, busy, below = RecordingSink(), RecordingSink(), RecordingSink()
            task = asyncio.create_task(drive_rollout(admin, policy_rollout(2), first, {}))
            await first.wait_for(_phase("Staging"), WAIT_S)
            with pytest.raises(RolloutBusyError):
                await drive_rollout(admin, policy_rollout(3, "/models/v3"), busy, {})
            waiting = dict(busy.current)
            worker.stage_gate.set()
            assert await asyncio.wait_for(task, WAIT_S) == "Done"
            retried = await drive_rollout(admin, policy_rollout(3, "/models/v3"), busy, busy.current)
            rejected = await drive_rollout(admin, policy_rollout(1, "/models/v1"), below, {})
            return waiting, retried, rejected, below, await cluster_state(etcd), follower

    waiting, retried, rejected, below, state, follower = run(scenario())
    assert not follower.coordinator.is_leader
    assert waiting["phase"] == "Pending"
    assert waiting["message"].startswith("waiting: rollout v2 is in flight")
    assert retried == "Done" and state.committed_version == 3
    assert rejected == "Rejected" and below.current["phase"] == "Rejected"
    assert "v1 is not above the committed epoch v3" in below.current["message"]
    assert _conditions(below.current)["Accepted"][:2] == ("False", "Rejected")
    assert 1 not in state.rollouts


def test_a_rollout_started_elsewhere_is_adopted_and_another_source_is_left_alone(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            (worker,) = await _gated_workers(stack, etcd, 1)
            admin = await _session(stack, coordinator.address)
            await admin.start_rollout(2, "/models/v2", "finish")  # as `epochctl rollout start` would
            created = (await cluster_state(etcd)).rollouts[2].value.created_at
            foreign, adopted = RecordingSink(), RecordingSink()
            refused = await drive_rollout(admin, policy_rollout(2, "nccl"), foreign, {})
            untouched = await finalize_rollout(admin, policy_rollout(2, "nccl"), foreign.current)
            task = asyncio.create_task(drive_rollout(admin, policy_rollout(2), adopted, {}))
            await adopted.wait_for(_phase("Staging"), WAIT_S)
            worker.stage_gate.set()
            final = await asyncio.wait_for(task, WAIT_S)
            return refused, foreign, untouched, final, adopted, created, await cluster_state(etcd)

    refused, foreign, untouched, final, adopted, created, state = run(scenario())
    assert refused == "Rejected"
    assert "already rolled out from '/models/v2', not 'nccl'" in foreign.current["message"]
    assert untouched is FinalizeOutcome.NOTHING
    assert final == "Done" and "Pending" not in adopted.phases
    record = state.rollouts[2].value
    assert record.created_at == created and record.drain == DrainPolicy.FINISH  # its own, not ours


def test_a_broken_watch_raises_and_the_retry_resumes_on_the_new_leader(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            (worker,) = await _gated_workers(stack, etcd, 1)
            sink = RecordingSink()
            async with contextlib.AsyncExitStack() as first:
                old = await leading(first, etcd, coordinator_id="c-old")
                admin = await _session(stack, old.address)
                task = asyncio.create_task(drive_rollout(admin, policy_rollout(), sink, {}))
                await sink.wait_for(_phase("Staging"), WAIT_S)
            # c-old stopped (and gave up the lead) while the operator watched through it
            with pytest.raises(AdminUnavailableError):
                await asyncio.wait_for(task, WAIT_S)
            new = await leading(stack, etcd, coordinator_id="c-new")
            worker.stage_gate.set()
            admin = await _session(stack, new.address)
            final = await drive_rollout(admin, policy_rollout(), sink, sink.current)
            return final, sink, await cluster_state(etcd)

    final, sink, state = run(scenario())
    assert final == "Done" and sink.phases[-1] == "Done" and "Pending" not in sink.phases[1:]
    assert state.rollouts[2].value.updated_by == "c-new" and state.committed_version == 2


def test_a_wrong_token_is_an_auth_error_and_writes_nothing(etcd):
    async def scenario():
        async with contextlib.AsyncExitStack() as stack:
            coordinator = await leading(stack, etcd)
            admin, sink = await _session(stack, coordinator.address, token="not-the-token"), RecordingSink()
            with pytest.raises(AdminAuthError, match="UNAUTHENTICATED"):
                await drive_rollout(admin, policy_rollout(), sink, {})
            return sink, await cluster_state(etcd)

    sink, state = run(scenario())
    assert sink.writes == [] and state.rollouts == {}
