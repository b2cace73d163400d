"""drain=overlap through a real cluster (etcd, coordinator, one worker process, a router).

While a long v0 request streams, v1 is rolled out with drain=overlap: a request sent after the
commit completes on v1 before the v0 request ends; each response names one version and carries the
logprobs of that version's weights (against transformers, 1e-4), not the other's; the rollout is
DONE only once v0 drained, and the worker's drain report says when v1's first token came. Then a
drain deadline (0 s, so that it passes for certain): the v0 request still running ends ABORTED
with the reason, and the rollout completes.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from routerkit import PROMPT, cluster_spec, max_logprob_gap, publish

from epochserve.app.local.cluster import LocalCluster
from epochserve.client.errors import AbortedError
from epochserve.client.generation import GenerationClient
from epochserve.controlplane.admin.client import AdminClient
from epochserve.proto.results import SampleFinished, TokenChunk
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.sampling import SamplingParams


def rollout_status(cluster: LocalCluster, version: int) -> pb.RolloutStatus:
    async def get() -> pb.RolloutStatus:
        async with AdminClient(cluster.admin_address, cluster.token) as admin:
            return await admin.get_rollout(version, timeout=30)

    return asyncio.run(get())


def test_an_overlap_rollout_serves_the_new_version_while_the_old_one_finishes(versions, tmp_path):
    a_dir, models, root = versions
    spec = cluster_spec(tmp_path, a_dir, num_workers=1)
    with LocalCluster(spec) as cluster, GenerationClient(cluster.router_address) as client:
        long_sampling = SamplingParams(temperature=1.0, max_tokens=300, ignore_eos=True, seed=1)
        long_running = client.stream(PROMPT, long_sampling, request_id="old")
        old_chunks = [next(long_running)]  # it runs on v0
        publish(cluster, 1, models[1], root, drain="overlap", wait_for="committed")
        new = client.generate(PROMPT, SamplingParams(temperature=1.0, max_tokens=8, seed=2), request_id="new")
        overlapping = rollout_status(cluster, 1)
        old_chunks += list(long_running)
        done = _wait_done(cluster, 1)

    (old,) = [event.sample for event in old_chunks if isinstance(event, SampleFinished)]
    assert {e.policy_version for e in old_chunks if isinstance(e, TokenChunk)} == {0} == {old.policy_version}
    assert new.policy_version == 1
    assert overlapping.rollout.phase == pb.ROLLOUT_PHASE_COMMITTED, "DONE before v0 drained"
    (worker,) = overlapping.workers
    assert worker.serving_version == 1 and worker.retiring_version == 0
    for sample, version, other in ((new.samples[0], 1, 0), (old, 0, 1)):
        assert max_logprob_gap(models[version], PROMPT, sample) < 1e-4
        assert max_logprob_gap(models[other], PROMPT, sample) > 1e-2, "the other version's logprobs"
    (worker,) = done.workers
    report = worker.last_drain
    assert not worker.HasField("retiring_version") and report.drain == pb.DRAIN_POLICY_OVERLAP
    assert report.first_token_seconds < report.retire_seconds  # v1 ran before v0 ended
    assert (report.finished_previous, report.aborted_previous) == (1, 0)


def test_a_drain_deadline_aborts_the_old_version_and_the_rollout_completes(versions, tmp_path):
    a_dir, models, root = versions
    spec = cluster_spec(tmp_path, a_dir, num_workers=1)
    with LocalCluster(spec) as cluster, GenerationClient(cluster.router_address) as client:
        long_sampling = SamplingParams(max_tokens=480, ignore_eos=True)
        long_running = client.stream(PROMPT, long_sampling, request_id="straggler")
        next(long_running)
        publish(cluster, 1, models[1], root, drain="overlap", wait_for="done", drain_deadline=0.0)
        with pytest.raises(AbortedError, match=r"straggler.*drain deadline of 0 s"):
            list(long_running)
        (worker,) = rollout_status(cluster, 1).workers
    assert worker.last_drain.aborted_previous == 1


def _wait_done(cluster: LocalCluster, version: int) -> pb.RolloutStatus:
    deadline = time.monotonic() + 60
    while True:
        status = rollout_status(cluster, version)
        report = status.workers[0].last_drain if status.workers else None
        if status.rollout.phase == pb.ROLLOUT_PHASE_DONE and report and report.HasField("retire_seconds"):
            return status
        assert time.monotonic() < deadline, f"v{version} not DONE with its drain report: {status}"
        time.sleep(0.1)
