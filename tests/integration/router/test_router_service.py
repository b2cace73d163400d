"""The Generation service end to end on one cluster (real etcd, coordinator, 2 workers, 4 routers):
prefix affinity, queue full, cancel/abort/deadline freeing the worker's blocks, metrics, the
audit log, TLS, `epochctl generate`, health/reflection, and min_policy_version across a rollout
(last: it moves the cluster to version 1)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time

import grpc
import pytest
from fixtures.grpc_client import worker_info
from fixtures.processes import EPOCHCTL
from grpc_health.v1 import health_pb2, health_pb2_grpc
from integration.controlplane.certs import self_signed
from routerkit import PROMPT, cluster_spec, max_logprob_gap, publish, scrape, wait_until, wait_worker_idle

from epochserve.app.local.cluster import LocalCluster
from epochserve.channels import ClientTls
from epochserve.client.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from epochserve.client.generation import AsyncGenerationClient, GenerationClient
from epochserve.proto.convert import OutputMode
from epochserve.proto.results import SampleFinished, TokenChunk
from epochserve.sampling import SamplingParams

LONG = SamplingParams(temperature=1.0, max_tokens=480, ignore_eos=True, seed=5)


@pytest.fixture(scope="module")
def cluster(versions, tmp_path_factory):
    a_dir, _models, _root = versions
    workdir = tmp_path_factory.mktemp("router_service")
    certs = workdir / "certs"
    certs.mkdir()
    server, client = self_signed(certs, "router"), self_signed(certs, "client")
    with LocalCluster(cluster_spec(workdir, a_dir, num_routers=0)) as running:
        running.add_router("--audit-log", str(workdir / "audit.jsonl"))  # router-0
        running.add_router("--policy", "prefix-affinity")  # router-1
        running.add_router("--max-queue", "2", "--retry-after", "0.5")  # router-2
        tls = ("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(client.cert))
        running.add_router(*tls)  # router-3
        running.certs = (server, client)  # type: ignore[attr-defined]
        running.audit_path = workdir / "audit.jsonl"  # type: ignore[attr-defined]
        yield running


def free_blocks(cluster) -> list[int]:
    return [worker_info(w.address).kv_cache.num_blocks_free for w in cluster.workers]


def test_prefix_affinity_keeps_a_group_and_its_repeats_on_one_worker_with_cache_hits(cluster):
    prompt = list(range(40, 56))  # 4 blocks of 4 tokens
    with GenerationClient(cluster.routers[1].address) as client:
        group = client.generate(prompt, SamplingParams(max_tokens=4, seed=1), n=4)
        workers = {s.worker_id for s in group.samples}
        assert len(workers) == 1
        repeats = [client.generate(prompt, SamplingParams(max_tokens=4, seed=i)) for i in range(5)]
        assert {r.samples[0].worker_id for r in repeats} == workers
        assert all(r.samples[0].diagnostics.prefix_cache_hit_blocks >= 3 for r in repeats)
        spread = {
            client.generate([7 * i + 1, 3, 9, 11 * i % 500], SamplingParams(max_tokens=1))
            .samples[0]
            .worker_id
            for i in range(16)
        }
        assert spread == {"worker-0", "worker-1"}, "different prompts still use every worker"


def test_a_full_queue_answers_resource_exhausted_with_a_retry_hint(cluster):
    router = cluster.routers[2]

    async def scenario() -> None:
        async with AsyncGenerationClient(router.address) as client:
            holds = [
                asyncio.ensure_future(client.generate(PROMPT, min_policy_version=50, timeout=60))
                for _ in range(2)
            ]
            depth = ("epochserve_router_queue_depth", (("version", "50"),))
            await asyncio.to_thread(
                wait_until, lambda: scrape(router).get(depth) == 2, 10, "2 queued requests"
            )
            with pytest.raises(ResourceExhaustedError) as refused:
                await client.generate(PROMPT, min_policy_version=50, request_id="third")
            assert refused.value.retry_after_seconds == 0.5 and "third" in refused.value.details
            for hold in holds:  # client cancel: the queue slots free at once
                hold.cancel()
            await asyncio.to_thread(
                wait_until, lambda: scrape(router).get(depth) == 0, 10, "the queue to empty"
            )

    asyncio.run(scenario())


def test_client_cancel_abort_and_deadline_free_the_workers_sequences(cluster):
    baseline = free_blocks(cluster)
    with GenerationClient(cluster.router_address) as client:
        # Cancel: the client stops reading; the router cancels its worker call.
        stream = client.stream(PROMPT, LONG, request_id="cancelled")
        assert isinstance(next(stream), TokenChunk)
        assert free_blocks(cluster) != baseline, "the running request holds KV blocks"
        stream.close()
        for worker, free in zip(cluster.workers, baseline, strict=True):
            wait_worker_idle(worker.address, free)
        # Abort through the router: the samples finish with ABORT.
        results = []
        thread = threading.Thread(
            target=lambda: results.append(client.generate(PROMPT, LONG, request_id="ab"))
        )
        thread.start()
        wait_until(
            lambda: sum(worker_info(w.address).num_running_seqs for w in cluster.workers) == 1, 30, "start"
        )
        assert client.abort("ab") and not client.abort("no-such-request")
        thread.join(30)
        [sample] = results[0].samples
        assert sample.finish_reason == "abort" and len(sample.token_ids) < LONG.max_tokens
        # Deadline: propagated to the worker, which frees the sequence.
        with pytest.raises(DeadlineExceededError):
            client.generate(PROMPT, LONG, timeout=0.5)
        for worker, free in zip(cluster.workers, baseline, strict=True):
            wait_worker_idle(worker.address, free)


def test_final_output_abort_and_deadline_end_as_in_stream(cluster):
    baseline = free_blocks(cluster)
    with GenerationClient(cluster.router_address) as client:
        # Abort through the router: the one message is the ABORT finish with the tokens made so far.
        events = []
        thread = threading.Thread(
            target=lambda: events.extend(
                client.stream(PROMPT, LONG, request_id="final-ab", output_mode=OutputMode.FINAL)
            )
        )
        thread.start()
        wait_until(
            lambda: sum(worker_info(w.address).num_running_seqs for w in cluster.workers) == 1, 30, "start"
        )
        time.sleep(0.3)  # a few decode steps: the abort then cuts a sample with tokens
        assert client.abort("final-ab")
        thread.join(30)
        [event] = events
        assert isinstance(event, SampleFinished) and event.sample.finish_reason == "abort"
        assert 0 < len(event.sample.token_ids) < LONG.max_tokens
        assert len(event.sample.processed_logprobs) == len(event.sample.token_ids)
        # Deadline: propagated to the worker, which frees the sequence; nothing was sent.
        with pytest.raises(DeadlineExceededError):
            client.generate(PROMPT, LONG, timeout=0.5, output_mode=OutputMode.FINAL)
        for worker, free in zip(cluster.workers, baseline, strict=True):
            wait_worker_idle(worker.address, free)


@pytest.mark.parametrize("output_mode", list(OutputMode))
def test_metrics_count_what_was_sent(cluster, output_mode):
    router = cluster.routers[0]
    before = scrape(router)
    with GenerationClient(router.address) as client:
        results = [
            client.generate(PROMPT, SamplingParams(max_tokens=4, seed=i), n=2, output_mode=output_mode)
            for i in range(5)
        ]
        with pytest.raises(InvalidArgumentError):
            client.generate([1, 99_999], SamplingParams(max_tokens=4))
    after = scrape(router)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("epochserve_router_requests_total", version="0", status="OK") == 5
    assert delta("epochserve_router_tokens_total", version="0", status="OK") == 5 * 2 * 4
    assert delta("epochserve_router_requests_total", version="none", status="INVALID_ARGUMENT") == 1
    assert delta("epochserve_router_ttft_seconds_count") == 5
    assert delta("epochserve_router_request_seconds_count") == 6
    if output_mode is OutputMode.STREAM:  # a gap per chunk after a sample's first; chunks that
        # queued behind a busy router go out merged (router/attempt.py), so at most one per token
        assert 0 < delta("epochserve_router_inter_token_seconds_count") <= 5 * 2 * 3
    else:  # TTFT is the time to the first whole sample; a sample's one message has no gaps
        assert delta("epochserve_router_inter_token_seconds_count") == 0
    used = {s.worker_id for r in results for s in r.samples}
    for worker in used:
        assert after[("epochserve_router_inflight_requests", (("worker", worker),))] == 0
    assert after[("epochserve_router_policy_version", ())] == 0
    assert after[("epochserve_router_rollouts_seen_total", ())] == 0


@pytest.mark.parametrize("output_mode", list(OutputMode))
def test_the_audit_log_records_every_completed_response(cluster, output_mode):
    with GenerationClient(cluster.router_address) as client:
        results = [
            client.generate(
                PROMPT[:5],
                SamplingParams(max_tokens=3, seed=9),
                request_id=f"audit-{output_mode}-{i}",
                output_mode=output_mode,
            )
            for i in range(3)
        ]

    def lines() -> dict[str, dict]:
        text = cluster.audit_path.read_text() if cluster.audit_path.exists() else ""
        return {line["request_id"]: line for line in map(json.loads, text.splitlines())}

    wait_until(lambda: all(r.request_id in lines() for r in results), 10, "the audit lines")
    for result in results:
        line = lines()[result.request_id]
        assert line["prompt_token_ids"] == PROMPT[:5] and line["sampling"]["seed"] == 9
        assert line["policy_version"] == result.policy_version
        [sample] = line["samples"]
        assert sample["token_ids"] == list(result.samples[0].token_ids)
        assert sample["processed_logprobs"] == list(result.samples[0].processed_logprobs)
        assert sample["worker_id"] == result.samples[0].worker_id == sample["diagnostics"]["worker_id"]
        # The router asked for support sizes for its log; the client, which did not, gets none.
        assert len(sample["support_sizes"]) == 3 and result.samples[0].support_sizes == ()


def test_mutual_tls_between_client_and_router(cluster):
    server, client_cert = cluster.certs
    address = cluster.routers[3].address
    tls = ClientTls(ca_file=server.cert, cert_file=client_cert.cert, key_file=client_cert.key)
    with GenerationClient(address, tls=tls) as client:
        assert client.generate(PROMPT, SamplingParams(max_tokens=2)).samples[0].token_ids
    for wrong in (None, ClientTls(ca_file=server.cert)):  # plaintext; TLS without a client certificate
        with (
            GenerationClient(address, tls=wrong, wait_for_ready=False, timeout=5) as client,
            pytest.raises(UnavailableError),
        ):
            client.generate(PROMPT, SamplingParams(max_tokens=2))


def test_epochctl_generate_health_and_reflection_against_a_router(cluster):
    address = cluster.router_address
    args = [
        "generate",
        "--target",
        address,
        "--token-ids",
        "5,17,33",
        "--max-tokens",
        "3",
        "--n",
        "2",
        "--json",
    ]
    done = subprocess.run([*EPOCHCTL, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    samples = [json.loads(line) for line in done.stdout.splitlines()]
    assert [s["sample_index"] for s in samples] == [0, 1]
    assert all(len(s["token_ids"]) == 3 and s["attempts"] == 1 and s["policy_version"] == 0 for s in samples)
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_min_policy_version_waits_for_the_rollout_or_its_deadline(cluster, versions):
    _a_dir, models, root = versions
    with GenerationClient(cluster.router_address) as client:
        assert client.get_policy().policy_version == 0 and client.get_policy().rollout_done
        with pytest.raises(DeadlineExceededError, match="policy version 1"):
            client.generate(PROMPT, SamplingParams(max_tokens=4), min_policy_version=1, timeout=0.5)
        results = []
        sampling = SamplingParams(temperature=1.0, max_tokens=6, seed=2)
        waiting = threading.Thread(
            target=lambda: results.append(
                client.generate(PROMPT, sampling, min_policy_version=1, timeout=120)
            )
        )
        waiting.start()
        time.sleep(0.5)
        assert waiting.is_alive() and not results, "held while the cluster is below the minimum"
        publish(cluster, 1, models[1], root, drain="finish", wait_for="committed")
        waiting.join(60)
        [result] = results
        assert result.policy_version == 1 and result.samples[0].diagnostics.policy_version == 1
        assert max_logprob_gap(models[1], PROMPT, result.samples[0]) < 1e-4
        wait_until(lambda: client.get_policy().rollout_done, 30, "the rollout to be DONE")
        assert client.get_policy().policy_version == 1
    assert scrape(cluster.routers[0])[("epochserve_router_rollouts_seen_total", ())] == 1
