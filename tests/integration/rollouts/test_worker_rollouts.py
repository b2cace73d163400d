"""Weight updates in real workers: a real etcd, coordinator and worker processes, tiny models.

Version A is the weights the workers start with (policy version 0); version B is other random
weights of the same architecture, published through PolicyPublisher.
"""

import asyncio
import signal
import threading
import time

import grpc
import pytest
import torch
from fixtures.engine import hf_model, hf_next_token_logits, make_engine, make_request, run_to_completion
from fixtures.grpc_client import generate, worker_info
from fixtures.models import build_tiny_model

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.client.publisher import PolicyPublisher, RolloutAbortedError
from epochserve.controlplane.admin.client import AdminClient
from epochserve.proto.convert import is_rollout_abort
from epochserve.proto.v1 import common_pb2, worker_pb2_grpc

WORKER_ARGS = ("--lease-ttl", "2", "--block-size", "4")
PROMPT = [5, 17, 33, 9, 100, 200, 300, 7, 8, 11]
OUTPUT_MODES = (common_pb2.OUTPUT_MODE_STREAM, common_pb2.OUTPUT_MODE_FINAL)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """Two checkpoints of the same architecture with different weights: A (start) and B."""
    root = tmp_path_factory.mktemp("versions")
    a = build_tiny_model("llama", root / "A", seed=0)
    b_model = hf_model(build_tiny_model("llama", root / "B-raw", seed=1))
    return a, b_model, root


def publish_b(cluster, version, b_model, root, drain="finish", **kwargs):
    publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=120)
    path = publisher.save_checkpoint(
        version, b_model.state_dict(), root / f"B-v{version}", config_from=root / "A"
    )
    return publisher, path, publisher.publish_checkpoint(version, path, drain=drain, **kwargs)


def start_cluster(tmp_path, model_dir, num_workers=2):
    spec = LocalClusterSpec(
        model_dir=model_dir,
        workdir=tmp_path,
        num_workers=num_workers,
        worker_args=WORKER_ARGS,
        fast_etcd=True,
    )
    return LocalCluster(spec)


def wait_serving(address, version, timeout=60):
    deadline = time.monotonic() + timeout
    while worker_info(address).policy_version != version:
        assert time.monotonic() < deadline, f"{address} never served v{version}"
        time.sleep(0.1)


def max_logprob_gap(model, prompt, tokens, logprobs):
    reference = torch.log_softmax(hf_next_token_logits(model, prompt, tokens), dim=-1)
    expected = reference[torch.arange(len(tokens)), torch.tensor(tokens)]
    return (expected - torch.tensor(logprobs)).abs().max().item()


def test_rollout_under_load_every_response_is_pure_and_matches_its_version(versions, tmp_path):
    a_dir, b_model, root = versions
    models = {0: hf_model(a_dir), 1: b_model}
    responses = []
    failures: list[grpc.RpcError] = []
    stop = threading.Event()
    with start_cluster(tmp_path, a_dir) as cluster:
        addresses = [w.address for w in cluster.workers]

        def load(index):
            i = 0
            while not stop.is_set():
                prompt = PROMPT[: 3 + (i % 7)]
                i += 1
                try:
                    samples = generate(
                        addresses[index % 2],
                        prompt,
                        request_id=f"l{index}-{i}",
                        max_tokens=8,
                        ignore_eos=True,
                        temperature=1.0,
                        seed=i,
                    )
                except grpc.RpcError as exc:
                    # A worker briefly fenced (its lease starved on a loaded machine) refuses with
                    # UNAVAILABLE: try again. Anything else fails the test below.
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        failures.append(exc)
                        return
                    time.sleep(0.1)
                    continue
                responses.append((prompt, samples[0]))

        threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        publish_b(cluster, 1, b_model, root, wait_for="done")
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
    seen = {next(iter(s.versions)) for _, s in responses}
    assert seen == {0, 1}, "the load must straddle the rollout"
    for prompt, sample in responses:
        assert len(sample.versions) == 1, "a response mixes versions"
        version = next(iter(sample.versions))
        assert sample.finish.diagnostics.policy_version == version
        assert max_logprob_gap(models[version], prompt, sample.token_ids, sample.logprobs) < 1e-4
        assert max_logprob_gap(models[1 - version], prompt, sample.token_ids, sample.logprobs) > 1e-3


def wait_running(address, timeout=30):
    deadline = time.monotonic() + timeout
    while worker_info(address).num_running_seqs == 0:
        assert time.monotonic() < deadline, f"{address} never ran the request"
        time.sleep(0.02)


@pytest.mark.parametrize("output_mode", OUTPUT_MODES, ids=["stream", "final"])
def test_drain_abort_retires_running_requests_with_a_reason(versions, tmp_path, output_mode):
    a_dir, b_model, root = versions
    with start_cluster(tmp_path, a_dir, num_workers=1) as cluster:
        address = cluster.workers[0].address
        request = common_pb2.GenerateRequest(
            request_id="long",
            prompt_token_ids=PROMPT,
            sampling=common_pb2.SamplingParams(max_tokens=480, ignore_eos=True),
            output_mode=output_mode,
        )
        with grpc.insecure_channel(address) as channel:
            stream = worker_pb2_grpc.WorkerStub(channel).Generate(request, timeout=120)
            if output_mode == common_pb2.OUTPUT_MODE_STREAM:
                assert next(stream).policy_version == 0
            else:  # FINAL sends nothing before the end
                wait_running(address)
            publish_b(cluster, 1, b_model, root, drain="abort")
            messages = list(stream)
        finish = messages[-1].finish
        assert finish.finish_reason == common_pb2.FINISH_REASON_ABORT
        assert is_rollout_abort(finish.abort_reason) and "1" in finish.abort_reason
        assert {m.policy_version for m in messages} == {0}
        if output_mode == common_pb2.OUTPUT_MODE_FINAL:  # one message: the abort, with the tokens made
            assert len(messages) == 1
            assert 0 < len(finish.output.token_ids) == finish.num_generated_tokens < 480
        wait_serving(address, 1)
        after = generate(address, PROMPT, max_tokens=3, output_mode=output_mode)
        assert after[0].versions == {1}


@pytest.mark.parametrize("output_mode", OUTPUT_MODES, ids=["stream", "final"])
def test_drain_finish_lets_running_requests_complete_on_the_old_version(versions, tmp_path, output_mode):
    a_dir, b_model, root = versions
    with start_cluster(tmp_path, a_dir, num_workers=1) as cluster:
        address = cluster.workers[0].address
        result = {}

        def long_request():
            result["samples"] = generate(
                address,
                PROMPT,
                request_id="finishing",
                max_tokens=300,
                ignore_eos=True,
                output_mode=output_mode,
            )

        thread = threading.Thread(target=long_request)
        thread.start()
        wait_running(address)
        publish_b(cluster, 1, b_model, root, drain="finish")
        thread.join(120)
        sample = result["samples"][0]
        assert sample.versions == {0} and len(sample.token_ids) == 300
        assert sample.finish.finish_reason == common_pb2.FINISH_REASON_LENGTH
        if output_mode == common_pb2.OUTPUT_MODE_FINAL:
            assert sample.num_messages == 1
        assert max_logprob_gap(hf_model(a_dir), PROMPT, sample.token_ids, sample.logprobs) < 1e-4
        wait_serving(address, 1)


def corrupt_flip_byte(path):
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-100] ^= 0x01  # inside the last tensor's data
    (path / "model.safetensors").write_bytes(bytes(data))


def drop_tensor(tensors):
    tensors.pop("model.layers.1.mlp.down_proj.weight")


def wrong_shape(tensors):
    tensors["model.norm.weight"] = tensors["model.norm.weight"][:-1].clone()


@pytest.mark.parametrize("breakage", ["flipped byte", "missing tensor", "wrong shape"])
def test_a_bad_checkpoint_aborts_and_workers_keep_serving_a_exactly(versions, tmp_path, breakage):
    a_dir, b_model, _root = versions
    with start_cluster(tmp_path, a_dir) as cluster:
        addresses = [w.address for w in cluster.workers]
        for address in addresses:  # fill the prefix cache, so that `before` and `after` compute alike
            generate(address, PROMPT, max_tokens=6, temperature=0.0)
        before = [generate(a, PROMPT, max_tokens=6, temperature=0.0)[0] for a in addresses]
        publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=120)
        tensors = {k: v.clone() for k, v in b_model.state_dict().items()}
        if breakage == "missing tensor":
            drop_tensor(tensors)
        elif breakage == "wrong shape":
            wrong_shape(tensors)
        path = publisher.save_checkpoint(1, tensors, tmp_path / "bad", config_from=a_dir)
        if breakage == "flipped byte":
            corrupt_flip_byte(path)
        with pytest.raises(RolloutAbortedError):
            publisher.publish_checkpoint(1, path)
        after = [generate(a, PROMPT, max_tokens=6, temperature=0.0)[0] for a in addresses]
        for b, a in zip(before, after, strict=True):
            assert a.versions == {0}
            assert a.token_ids == b.token_ids and a.logprobs == b.logprobs


def test_worker_killed_while_staging_comes_back_serving_the_new_version(versions, tmp_path):
    a_dir, b_model, _root = versions
    with start_cluster(tmp_path, a_dir) as cluster:
        victim = cluster.workers[1]
        victim.signal(signal.SIGSTOP)  # it cannot stage; the rollout goes on without it once its lease ends
        publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=120)
        path = publisher.save_checkpoint(1, b_model.state_dict(), tmp_path / "B", config_from=a_dir)
        done = threading.Thread(
            target=publisher.publish_checkpoint, args=(1, path), kwargs={"wait_for": "done"}
        )
        done.start()
        time.sleep(0.5)
        victim.signal(signal.SIGKILL)
        done.join(120)
        wait_serving(cluster.workers[0].address, 1)
        restarted = cluster.restart_worker(1)
        wait_serving(restarted.address, 1)
        assert generate(restarted.address, PROMPT, max_tokens=4)[0].versions == {1}


def test_prefix_cache_entries_of_a_do_not_serve_b(versions, tmp_path):
    a_dir, b_model, root = versions
    with start_cluster(tmp_path, a_dir, num_workers=1) as cluster:
        address = cluster.workers[0].address
        prompt = list(range(20, 40))  # 5 blocks of 4
        generate(address, prompt, max_tokens=2, temperature=0.0)
        hits = worker_info(address).kv_cache.prefix_cache_hits
        generate(address, prompt, max_tokens=2, temperature=0.0)
        assert worker_info(address).kv_cache.prefix_cache_hits - hits == 4
        publish_b(cluster, 1, b_model, root, wait_for="done")
        wait_serving(address, 1)
        hits = worker_info(address).kv_cache.prefix_cache_hits
        first_b = generate(address, prompt, max_tokens=2, temperature=0.0)[0]
        assert worker_info(address).kv_cache.prefix_cache_hits == hits  # recomputed under B
        assert first_b.finish.diagnostics.prefix_cache_hit_blocks == 0
        generate(address, prompt, max_tokens=2, temperature=0.0)
        assert worker_info(address).kv_cache.prefix_cache_hits - hits == 4  # B's own blocks now hit


def test_publish_tensors_over_gloo_into_tp2_and_tp1_workers(versions, tmp_path):
    a_dir, b_model, _root = versions
    spec = LocalClusterSpec(
        model_dir=a_dir,
        workdir=tmp_path,
        num_workers=2,
        worker_tps=(2, 1),
        worker_args=WORKER_ARGS,
        fast_etcd=True,
    )
    checkpoint = tmp_path / "B-broadcast"
    with LocalCluster(spec) as cluster:
        publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=120)
        result = publisher.publish_tensors(  # 16 KiB buckets: many, some packed, some one big tensor
            1, b_model.state_dict(), checkpoint, config_from=a_dir, wait_for="done", bucket_bytes=16384
        )
        assert result.phase == "done"
        addresses = [w.address for w in cluster.workers]
        got = {}
        for address in addresses:
            wait_serving(address, 1)
            got[address] = [
                generate(address, PROMPT[:n], max_tokens=8, ignore_eos=True, **case)[0]
                for n in (3, 10)
                for case in (dict(temperature=0.0), dict(temperature=1.0, seed=4))
            ]
        fingerprints = asyncio.run(list_fingerprints(cluster))
    # The same weights loaded from the checkpoint the publisher wrote, in this process (TP=1).
    reference = make_engine(checkpoint, block_size=4, policy_version=1)
    requests = [
        make_request(f"{n}-{c}", PROMPT[:n], reference.limits, max_tokens=8, ignore_eos=True, **case)
        for n in (3, 10)
        for c, case in enumerate((dict(temperature=0.0), dict(temperature=1.0, seed=4)))
    ]
    expected = [samples[0] for samples in run_to_completion(reference, requests).values()]
    for address, tolerance in zip(
        addresses, (1e-4, 1e-5), strict=True
    ):  # TP=2 sums partials in another order
        for wire, want in zip(got[address], expected, strict=True):
            assert wire.versions == {1}
            assert wire.token_ids == want.token_ids
            assert wire.logprobs == pytest.approx(want.logprobs, abs=tolerance)
    # I4: the TP=1 worker's live weights are bit-identical to the checkpoint's.
    assert fingerprints["worker-1"] == reference.weights.fingerprint()
    assert fingerprints["worker-0"] != fingerprints["worker-1"]  # TP=2 holds other shards: its own print


async def list_fingerprints(cluster):
    async with AdminClient(cluster.admin_address, cluster.token) as admin:
        workers = (await admin.list_workers(timeout=10)).workers
    return {w.worker_id: w.fingerprint for w in workers}
