"""The store layer against a real etcd: leases, election, guarded writes, the cluster watch,
strict decoding, duplicate ids."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from fakes import FakeWorker
from harness import cluster_state, run

from epochserve.controlplane.coordinator.decide import CommitRollout
from epochserve.controlplane.coordinator.requests import StartRequest
from epochserve.controlplane.coordinator.writer import RolloutWriter, Timeouts
from epochserve.controlplane.store import codec
from epochserve.controlplane.store.client import EtcdStore, put_op
from epochserve.controlplane.store.election import Election
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.lease import Lease
from epochserve.controlplane.store.records import (
    CandidateRecord,
    DrainPolicy,
    EpochRecord,
    RolloutPhase,
    RolloutRecord,
)
from epochserve.controlplane.store.state import read_state
from epochserve.controlplane.store.watch import ClusterWatch
from epochserve.errors import DuplicateParticipantError, LeaseLostError, NotLeaderError


@contextlib.asynccontextmanager
async def connected(config: EtcdConfig):
    store = EtcdStore(config)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


def test_session_keeps_its_lease_alive_until_revoked(etcd):
    async def scenario():
        async with connected(etcd.config) as store, connected(etcd.config) as other:
            lease = await Lease.open(store, ttl=1)
            await store.put(b"/lease-test/" + etcd.cluster.encode(), b"x", lease=lease.lease_id)
            await asyncio.sleep(2.5)  # the behaviour under test is surviving 2.5 TTLs
            alive = (lease.is_lost, await store.get(b"/lease-test/" + etcd.cluster.encode()) is not None)
            await other.revoke_lease(lease.lease_id)
            reason = await asyncio.wait_for(lease.wait_lost(), 5)
            gone = await store.get(b"/lease-test/" + etcd.cluster.encode())
            with pytest.raises(LeaseLostError):
                lease.check()
            await lease.close()
            return alive, reason, gone

    alive, reason, gone = run(scenario())
    assert alive == (False, True)
    assert reason == "the lease expired or was revoked" and gone is None


def test_session_is_lost_within_its_ttl_when_etcd_is_unreachable(etcd, etcd_proxy):
    async def scenario():
        # The production request timeout: the lease grant goes through the proxy, and a starved
        # machine can take over a second to connect. Losing the lease is the TTL's job, not its.
        async with connected(EtcdConfig((etcd_proxy.endpoint,))) as store:
            lease = await Lease.open(store, ttl=1)
            etcd_proxy.cut()
            reason = await asyncio.wait_for(lease.wait_lost(), 3)
            await lease.close(revoke=False)
            return reason

    assert run(scenario()) == "no keepalive acknowledged within the lease TTL"


def test_election_passes_the_lead_in_order_and_each_waits_for_its_predecessor(etcd):
    keyspace = Keyspace(etcd.cluster)

    async def scenario():
        async with connected(etcd.config) as store:
            leases = [await Lease.open(store, ttl=5) for _ in range(3)]
            elections = [
                Election(store, keyspace, s, CandidateRecord(f"c{i}", f"127.0.0.1:{7000 + i}"))
                for i, s in enumerate(leases)
            ]
            first = await elections[0].campaign()
            waiting = [asyncio.create_task(e.campaign()) for e in elections[1:]]
            await _until_candidates(store, keyspace, 3)
            await leases[1].close()  # the middle candidate leaves: c2 now waits for c0 directly
            with pytest.raises(LeaseLostError):
                await waiting[0]
            assert not waiting[1].done()
            await leases[0].close()  # the leader leaves
            third = await asyncio.wait_for(waiting[1], 5)
            state = await read_state(store, keyspace)
            await leases[2].close()
            return first, third, state

    first, third, state = run(scenario())
    assert first.create_revision < third.create_revision
    assert [c.value.coordinator_id for c in state.candidates] == ["c2"]
    assert third.holds_in(state) and not first.holds_in(state)


async def _until_candidates(store, keyspace, count):
    while len((await read_state(store, keyspace)).candidates) < count:
        await asyncio.sleep(0.02)


def test_write_of_a_leader_whose_lease_is_gone_does_not_land(etcd):
    """The second line of defence: even while the leader's own lease has not noticed yet, the
    transaction's leader guard refuses the write."""
    keyspace = Keyspace(etcd.cluster)

    async def scenario():
        async with connected(etcd.config) as store, connected(etcd.config) as other:
            lease = await Lease.open(store, ttl=30)
            lead = await Election(store, keyspace, lease, CandidateRecord("c0", "127.0.0.1:7000")).campaign()
            writer = RolloutWriter(store, keyspace, "c0", Timeouts(30, 30))
            await writer.start(lead, StartRequest(1, "/ckpt/v1", DrainPolicy.FINISH))
            state = await read_state(store, keyspace)
            await other.revoke_lease(lease.lease_id)  # the lead is gone; the lease does not know yet
            assert not lease.is_lost
            with pytest.raises(NotLeaderError):
                await writer.apply(lead, state.rollouts[1], state, CommitRollout("sum"))
            with pytest.raises(NotLeaderError):
                await writer.start(lead, StartRequest(2, "/ckpt/v2", DrainPolicy.FINISH))
            after = await read_state(store, keyspace)
            await lease.close()
            return state, after

    before, after = run(scenario())
    assert after.epoch is None and list(after.rollouts) == [1]
    assert after.rollouts[1].mod_revision == before.rollouts[1].mod_revision
    assert after.rollouts[1].value.phase is RolloutPhase.STAGING


def test_cluster_watch_applies_each_transaction_whole(etcd):
    keyspace = Keyspace(etcd.cluster)

    def rollout(v: int) -> RolloutRecord:
        return RolloutRecord(v, "/ckpt", DrainPolicy.FINISH, RolloutPhase.DONE, 1.0, 1.0, "c0", 30.0)

    async def scenario():
        async with connected(etcd.config) as store:
            watch = ClusterWatch(store, keyspace)
            watch.start()
            seen = []

            async def follow():
                state = await watch.wait_for(lambda s: True, 5)
                while state.committed_version < 20:
                    seen.append(state)
                    state = await watch.next_state(state.revision, 5) or state
                seen.append(state)

            follower = asyncio.create_task(follow())
            for v in range(1, 21):
                epoch = EpochRecord(v, 1.0, "c0")
                ops = [
                    put_op(keyspace.rollout(v), codec.encode(rollout(v))),
                    put_op(keyspace.epoch(), codec.encode(epoch)),
                ]
                assert await store.txn([], ops)
            await asyncio.wait_for(follower, 10)
            await watch.stop()
            return seen

    seen = run(scenario())
    assert seen[-1].committed_version == 20 and len(seen) > 1
    for state in seen:  # never the rollout without its epoch, or the reverse
        assert state.committed_version == max(state.rollouts, default=0)
    assert [s.revision for s in seen] == sorted(s.revision for s in seen)


def test_cluster_watch_resumes_after_an_etcd_restart(private_etcd):
    keyspace = Keyspace(private_etcd.cluster)

    async def scenario():
        async with connected(private_etcd.config) as store:
            watch = ClusterWatch(store, keyspace)
            watch.start()
            await store.put(keyspace.epoch(), codec.encode(EpochRecord(1, 1.0, "c0")))
            await watch.wait_for(lambda s: s.committed_version == 1, 5)
            private_etcd.server.restart()
            async with connected(private_etcd.config) as writer:
                await _put_when_up(writer, keyspace.epoch(), codec.encode(EpochRecord(2, 2.0, "c0")))
            state = await watch.wait_for(lambda s: s.committed_version == 2, 10)
            await watch.stop()
            return state

    assert run(scenario()).epoch.value.committed_at == 2.0


async def _put_when_up(store, key, value):
    for _ in range(100):
        with contextlib.suppress(Exception):
            return await store.put(key, value)
        await asyncio.sleep(0.05)
    raise AssertionError("etcd did not come back")


def test_values_that_do_not_decode_are_rejected_whole(etcd):
    keyspace = Keyspace(etcd.cluster)
    good = codec.encode(EpochRecord(3, 1.0, "c0"))
    unknown_schema = good.replace(f'"schema":{codec.SCHEMA_VERSION}'.encode(), b'"schema":99')

    async def scenario():
        async with connected(etcd.config) as store:
            await store.put(keyspace.epoch(), good)
            await store.put(keyspace.worker("w-garbage"), b"{not json")
            await store.put(keyspace.worker("w-future"), unknown_schema)
            await store.put(keyspace.rollout(9), codec.encode(EpochRecord(9, 1.0, "c0")))  # wrong kind
            return await read_state(store, keyspace)

    state = run(scenario())
    assert state.committed_version == 3 and state.workers == {} and state.rollouts == {}
    reasons = {name: why for (_, name), why in state.invalid.items()}
    assert reasons["w-garbage"].startswith("not JSON")
    assert reasons["w-future"] == f"schema 99 is not the schema this build reads ({codec.SCHEMA_VERSION})"
    assert reasons["9"] == "kind 'epoch' where a rollout record belongs"


def test_a_second_process_cannot_take_a_registered_worker_id(etcd):
    async def scenario():
        async with FakeWorker(etcd, "w-dup") as first:
            second = FakeWorker(etcd, "w-dup", register_timeout=0.5)
            with pytest.raises(DuplicateParticipantError):
                await second.participant.start(timeout=5)
            await second.participant.close()
            return first, await cluster_state(etcd)

    first, state = run(scenario())
    assert state.workers["w-dup"].value.incarnation == first.participant.incarnation
