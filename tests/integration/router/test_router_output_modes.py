"""Output modes end to end (real etcd, coordinator, one worker, one router, a tiny Llama): a W5-shaped
rollout batch (docs/design.md §8) gives the very same token ids and logprobs from the engine in
this process, through the router streamed, and through the router in OUTPUT_MODE_FINAL, which
delivers exactly one message per sample; an unknown mode is refused naming output_mode; the load
tester runs in FINAL mode.

Exact equality holds by construction here, not by luck: the noise is counter-based (seed, sample,
position), and the worker and the in-process engine run the same kernels on the same device in
batch-invariant mode, so neither how the router's requests happen to share batches nor which
transport carried them can move a bit. The prefix cache is off on both sides: a prompt computed
over a cached prefix is the same prompt computed another way (tests/integration/worker/
test_smollm2_engine.py says why that matters to the bit, not to the meaning).
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import grpc
import pytest
from fixtures.engine import make_engine, make_request, run_to_completion
from fixtures.models import build_tiny_model
from fixtures.processes import EPOCHCTL
from routerkit import cluster_spec

from epochserve.app.local.cluster import LocalCluster
from epochserve.client.errors import InvalidArgumentError
from epochserve.client.generation import AsyncGenerationClient, GenerationClient, build_request
from epochserve.proto.convert import OutputMode
from epochserve.proto.results import Sample, SampleFinished, StreamEvent, TokenChunk
from epochserve.proto.v1 import common_pb2, worker_pb2_grpc
from epochserve.sampling import SamplingParams

# W5's shape on a CPU: prompts x n samples at temperature 1 with a nucleus, ignore_eos, fixed seeds.
NUM_PROMPTS, N, NEW_TOKENS, TOP_P = 8, 4, 24, 0.9
BLOCK_SIZE = 4
EXACT = dict(batch_invariant=True, enable_prefix_cache=False, block_size=BLOCK_SIZE)
WORKER_ARGS = ("--batch-invariant", "--no-prefix-cache")  # routerkit adds --block-size 4


def prompts() -> list[list[int]]:
    return [[(37 * i + 11 * j) % 500 + 3 for j in range(6 + i)] for i in range(NUM_PROMPTS)]


def sampling_fields(seed: int) -> dict:
    return dict(
        temperature=1.0, top_p=TOP_P, max_tokens=NEW_TOKENS, seed=seed, ignore_eos=True,
        num_top_logprobs=2, return_raw_logprobs=True, return_support_size=True,
    )  # fmt: skip


def sampling(seed: int) -> SamplingParams:
    return SamplingParams(**sampling_fields(seed))


# What one sample is, compared across paths: ids, processed/raw/top logprobs, support sizes.
Key = tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], tuple, tuple[int, ...]]


def key_of(sample: Sample) -> Key:
    top = tuple((t.token_ids, t.logprobs) for t in sample.top_logprobs)
    return sample.token_ids, sample.processed_logprobs, sample.raw_logprobs, top, sample.support_sizes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_model("llama", tmp_path_factory.mktemp("output_modes") / "llama", seed=0)


@pytest.fixture(scope="module")
def cluster(model_dir, tmp_path_factory):
    spec = cluster_spec(tmp_path_factory.mktemp("cluster"), model_dir, num_workers=1, worker_args=WORKER_ARGS)
    with LocalCluster(spec) as running:
        yield running


def in_process(model_dir) -> list[list[Key]]:
    """The engine in this process, every request added at once and stepped to the end (W5's
    `engine` path); the samples' keys, by prompt then sample index."""
    engine = make_engine(model_dir, **EXACT)
    requests = [
        make_request(f"p{i}", prompt, engine.limits, n=N, **sampling_fields(1000 + i))
        for i, prompt in enumerate(prompts())
    ]
    out = run_to_completion(engine, requests)
    engine.close()
    keys = []
    for i in range(NUM_PROMPTS):
        samples = out[f"p{i}"]
        assert all(s.policy_versions == {0} and len(s.token_ids) == NEW_TOKENS for s in samples.values())
        keys.append([
            (tuple(s.token_ids), tuple(s.logprobs), tuple(s.raw_logprobs), tuple(s.top_logprobs),
             tuple(s.support_sizes))
            for s in (samples[j] for j in range(N))
        ])  # fmt: skip
    return keys


async def through_router(address: str, mode: OutputMode) -> list[list[StreamEvent]]:
    """Every request in flight at once through the router (W5's router paths), each one's events."""
    async with AsyncGenerationClient(address, timeout=300) as client:

        async def one(i: int, prompt: list[int]) -> list[StreamEvent]:
            stream = client.stream(
                prompt, sampling(1000 + i), n=N, request_id=f"{mode}-{i}", output_mode=mode
            )
            return [event async for event in stream]

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts()))))


def samples_of(events: list[StreamEvent]) -> list[Sample]:
    finished = sorted(
        (e.sample for e in events if isinstance(e, SampleFinished)), key=lambda s: s.sample_index
    )
    assert [s.sample_index for s in finished] == list(range(N))
    assert all(s.policy_version == 0 and s.finish_reason == "length" for s in finished)
    return finished


def test_a_w5_shaped_batch_is_identical_in_process_streamed_and_final(cluster, model_dir):
    expected = in_process(model_dir)
    by_mode = {mode: asyncio.run(through_router(cluster.router_address, mode)) for mode in OutputMode}
    for i in range(NUM_PROMPTS):
        stream, final = by_mode[OutputMode.STREAM][i], by_mode[OutputMode.FINAL][i]
        assert sum(isinstance(e, TokenChunk) for e in stream) > N  # streamed: chunks, then finishes
        # FINAL: exactly one message per sample, its finish holding the whole sample
        assert len(final) == N and all(isinstance(e, SampleFinished) for e in final)
        assert [key_of(s) for s in samples_of(stream)] == expected[i], f"prompt {i}: streamed vs in-process"
        assert [key_of(s) for s in samples_of(final)] == expected[i], f"prompt {i}: final vs in-process"
        seeds = {s.diagnostics.seed for s in samples_of(stream) + samples_of(final)}
        assert seeds == {1000 + i}


def test_final_is_one_wire_message_per_sample_from_the_worker_and_the_router(cluster):
    request = build_request(prompts()[0], sampling(7), n=N, output_mode=OutputMode.FINAL)
    with grpc.insecure_channel(cluster.workers[0].address) as channel:
        from_worker = list(worker_pb2_grpc.WorkerStub(channel).Generate(request, timeout=60))
    with GenerationClient(cluster.router_address) as client:
        from_router = client.send(request)
    assert sorted(m.sample_index for m in from_worker) == list(range(N))
    for message in from_worker:
        assert message.HasField("finish") and len(message.finish.output.token_ids) == NEW_TOKENS
        [routed] = [s for s in from_router.samples if s.sample_index == message.sample_index]
        assert tuple(message.finish.output.token_ids) == routed.token_ids
        assert tuple(message.finish.output.logprobs) == routed.processed_logprobs


def test_an_unknown_output_mode_is_invalid_argument_naming_the_field(cluster):
    request = build_request(prompts()[0], sampling(7))
    request.output_mode = 7  # a value no build knows (proto3 keeps unknown enum numbers)
    with GenerationClient(cluster.router_address) as client, pytest.raises(InvalidArgumentError) as refused:
        client.send(request)
    assert "output_mode" in refused.value.details
    with grpc.insecure_channel(cluster.workers[0].address) as channel, pytest.raises(grpc.RpcError) as worker:
        list(worker_pb2_grpc.WorkerStub(channel).Generate(request, timeout=30))
    assert worker.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "output_mode" in worker.value.details()
    assert request.output_mode not in common_pb2.OutputMode.values()


def test_the_load_tester_runs_in_final_mode(cluster, tmp_path):
    out = tmp_path / "report"
    command = [
        *EPOCHCTL, "loadtest", "--target", cluster.router_address, "--concurrency", "4",
        "--num-requests", "12", "--n", "2", "--output-len", "fixed:8", "--output-mode", "final",
        "--out", str(out), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["output_mode"] == "final" and report["counts"]["completed"] == 12
    latency = report["latency_seconds"]
    assert latency["ttft"]["count"] == 12 and latency["inter_token"] is None  # one message per sample
    assert "output mode final" in done.stdout


def test_scoring_through_the_router_gives_back_a_sampled_completions_logprobs(cluster):
    # return_prompt_logprobs end to end: sample a completion, then score prompt + completion with
    # the same params; the completion's prompt logprobs are the ones it was sampled with. A prefill
    # and a decode compute a position's logits in other orders: equal to fp32 rounding, not the bit.
    prompt = prompts()[2]
    with GenerationClient(cluster.router_address) as client:
        [sampled] = client.generate(prompt, sampling(5)).samples
        full = [*prompt, *sampled.token_ids]
        scoring = SamplingParams(**{**sampling_fields(5), "max_tokens": 1, "return_prompt_logprobs": True})
        for mode in OutputMode:
            [scored] = client.send(build_request(full, scoring, output_mode=mode)).samples
            assert len(scored.prompt_logprobs) == len(full) - 1, mode
            completion = scored.prompt_logprobs[len(prompt) - 1 :]
            assert completion == pytest.approx(sampled.processed_logprobs, abs=1e-4), mode


def test_routed_experts_of_a_dense_model_are_refused_through_the_router(cluster):
    # The router does not know the model; the worker refuses at admission (INVALID_ARGUMENT naming
    # the field) and the router hands that status to the client unchanged, in either mode.
    asking = SamplingParams(**{**sampling_fields(3), "return_routed_experts": True})
    with GenerationClient(cluster.router_address) as client:
        for mode in OutputMode:
            with pytest.raises(InvalidArgumentError) as refused:
                client.send(build_request(prompts()[0], asking, output_mode=mode))
            assert "return_routed_experts" in refused.value.details and "dense" in refused.value.details
