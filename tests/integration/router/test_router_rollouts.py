"""Routers under load across rollouts: real etcd, coordinator, 2 workers and 2 router processes.

200 client tasks keep a request each in flight through two routers while three rollouts happen
(drain finish, abort, finish), half of them in output mode STREAM and half in FINAL. Checked on
every response: one policy version (I1), >= every version its router had switched to before it
was sent, and >= every version DONE before it was sent (I2); every request ends completed or with
an explicit error (I5), and the errors are only the ABORTED of requests a drain=abort rollout
retired after they streamed (never a FINAL one: it sends nothing before it completed).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass

import pytest
from fixtures.grpc_client import worker_info
from routerkit import PROMPT, cluster_spec, max_logprob_gap, publish, wait_until

from epochserve.app.local.cluster import LocalCluster
from epochserve.client.errors import AbortedError, GenerationError
from epochserve.client.generation import AsyncGenerationClient, GenerationClient
from epochserve.proto.convert import OutputMode
from epochserve.proto.results import GenerateResult
from epochserve.sampling import SamplingParams

NUM_CONCURRENT = 200
ROLLOUTS = ((1, "finish"), (2, "abort"), (3, "finish"))


@dataclass
class Sent:
    router: str
    prompt: list[int]
    sent_at: float  # time.monotonic()
    outcome: GenerateResult | GenerationError
    output_mode: OutputMode


@dataclass
class LoadRun:
    sent: list[Sent]
    num_sent: int
    switched_at: dict[str, dict[int, float]]  # router → version → when GetPolicy first showed it
    done_at: dict[int, float]  # version → when its rollout reached DONE


async def run_load_during_rollouts(cluster: LocalCluster, models: dict, root) -> LoadRun:
    routers = [r.address for r in cluster.routers]
    clients = {address: AsyncGenerationClient(address, timeout=120) for address in routers}
    run = LoadRun([], 0, {address: {} for address in routers}, {})
    stop = asyncio.Event()

    async def watch_policy(address: str) -> None:
        while not stop.is_set():
            info = await clients[address].get_policy()
            run.switched_at[address].setdefault(info.policy_version, time.monotonic())
            await asyncio.sleep(0.01)

    async def keep_one_in_flight(task_index: int) -> None:
        address = routers[task_index % len(routers)]
        # Half the tasks ask for one message per sample: the same guarantees hold for them.
        output_mode = OutputMode.FINAL if task_index % 4 >= 2 else OutputMode.STREAM
        rng = random.Random(task_index)
        while not stop.is_set():
            prompt = PROMPT[: rng.randint(3, len(PROMPT))]
            sampling = SamplingParams(
                temperature=1.0, max_tokens=rng.randint(6, 14), ignore_eos=True, seed=rng.randrange(2**31)
            )
            run.num_sent += 1
            sent_at = time.monotonic()
            try:
                outcome: GenerateResult | GenerationError = await clients[address].generate(
                    prompt, sampling, output_mode=output_mode
                )
            except GenerationError as exc:
                outcome = exc
            run.sent.append(Sent(address, prompt, sent_at, outcome, output_mode))

    async def until_each_mode_completed_on(version: int) -> None:
        """Load runs on under `version` until a request of each output mode completed on it (a
        loaded machine may take seconds), so that every version is checked in both modes."""
        deadline = time.monotonic() + 60
        while {
            s.output_mode
            for s in run.sent
            if isinstance(s.outcome, GenerateResult) and s.outcome.policy_version == version
        } != set(OutputMode):
            assert time.monotonic() < deadline, f"no request of each output mode completed on v{version}"
            await asyncio.sleep(0.05)

    tasks = [asyncio.ensure_future(watch_policy(a)) for a in routers]
    tasks += [asyncio.ensure_future(keep_one_in_flight(i)) for i in range(NUM_CONCURRENT)]
    await until_each_mode_completed_on(0)
    for version, drain in ROLLOUTS:
        await asyncio.to_thread(publish, cluster, version, models[version], root, drain)
        run.done_at[version] = time.monotonic()
        await until_each_mode_completed_on(version)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    for client in clients.values():
        await client.close()
    return run


def test_200_concurrent_requests_across_three_rollouts_are_pure_fresh_and_all_accounted(versions, tmp_path):
    a_dir, models, root = versions
    # Few sequences per worker, so that most requests wait inside a worker and a drain=abort
    # rollout retires some that streamed nothing (re-run) and some that did (ABORTED).
    spec = cluster_spec(tmp_path, a_dir, num_routers=2, worker_args=("--max-num-seqs", "16"))
    with LocalCluster(spec) as cluster:
        run = asyncio.run(run_load_during_rollouts(cluster, models, root))

    assert run.num_sent == len(run.sent), "every request sent ended, completed or with an error"
    completed = [s for s in run.sent if isinstance(s.outcome, GenerateResult)]
    errors = [s.outcome for s in run.sent if isinstance(s.outcome, GenerationError)]
    unexpected = [e for e in errors if not (isinstance(e, AbortedError) and "drain=abort" in e.details)]
    assert not unexpected, unexpected[:3]
    assert len(completed) > 2 * NUM_CONCURRENT
    for mode in OutputMode:
        versions_seen = {s.outcome.policy_version for s in completed if s.output_mode is mode}  # type: ignore[union-attr]
        assert versions_seen == {0, 1, 2, 3}, mode
    # A FINAL request of one sample has sent nothing until it completed: a drain=abort re-runs it.
    assert not [
        s for s in run.sent if s.output_mode is OutputMode.FINAL and isinstance(s.outcome, GenerationError)
    ]

    reruns = {mode: 0 for mode in OutputMode}
    for sent in completed:
        result = sent.outcome
        assert isinstance(result, GenerateResult)
        version = result.policy_version
        for sample in result.samples:  # I1: the assembler already refused mixed versions
            assert sample.policy_version == version == sample.diagnostics.policy_version
        switched = [v for v, at in run.switched_at[sent.router].items() if at < sent.sent_at]
        assert version >= max(switched, default=0), "admitted after its router switched to v, ran below v"
        done = [v for v, at in run.done_at.items() if at < sent.sent_at]
        assert version >= max(done, default=0), "sent after v was DONE, ran below v"
        diagnostics = result.samples[0].diagnostics
        if diagnostics.rerun_under_new_version:
            reruns[sent.output_mode] += 1
            assert version == 2 and diagnostics.attempts >= 2
    assert all(reruns.values()), f"the drain=abort rollout re-ran requests that had sent nothing: {reruns}"
    assert errors, "the drain=abort rollout ended requests that had streamed with ABORTED"

    # The version named is the version that computed the logprobs (a sample of responses).
    for sent in random.Random(0).sample(completed, 40):
        result = sent.outcome
        assert isinstance(result, GenerateResult)
        sample = result.samples[0]
        assert max_logprob_gap(models[result.policy_version], sent.prompt, sample) < 1e-4


def test_a_drain_abort_reruns_what_streamed_nothing_and_aborts_what_did(versions, tmp_path):
    a_dir, models, root = versions
    spec = cluster_spec(tmp_path, a_dir, num_workers=1, worker_args=("--max-num-seqs", "1"))
    with LocalCluster(spec) as cluster, GenerationClient(cluster.router_address) as client:
        worker = cluster.workers[0].address
        long_running = client.stream(
            PROMPT, SamplingParams(max_tokens=400, ignore_eos=True), request_id="streaming"
        )
        next(long_running)  # it has streamed
        queued: list[GenerateResult] = []
        sampling = SamplingParams(temperature=1.0, max_tokens=8, seed=4)
        thread = threading.Thread(
            target=lambda: queued.append(client.generate(PROMPT, sampling, request_id="queued"))
        )
        thread.start()
        wait_until(lambda: worker_info(worker).num_waiting_seqs == 1, 30, "the second request to queue")
        publish(cluster, 1, models[1], root, drain="abort", wait_for="committed")
        with pytest.raises(AbortedError, match=r"streaming.*drain=abort"):
            list(long_running)
        thread.join(60)
        [result] = queued
        sample = result.samples[0]
        assert result.policy_version == 1 and sample.worker_id == "worker-0"
        assert sample.diagnostics.rerun_under_new_version and sample.diagnostics.attempts == 2
        assert max_logprob_gap(models[1], PROMPT, sample) < 1e-4
