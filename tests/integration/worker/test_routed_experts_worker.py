"""Routing replay through a real worker process at TP=2 (gloo): the routed experts a client
assembles from the Worker service's messages (STREAM and FINAL, n = 2, a prefix-cache hit) are the
top-k of transformers' router at the same positions. Every rank routes alike; rank 0 reports."""

import grpc
import numpy as np
import pytest
import torch
from fixtures.engine import hf_model
from fixtures.moe import compare_routing, hf_router_probs
from fixtures.processes import running_worker

from epochserve.proto.results import ResponseAssembler, Sample
from epochserve.proto.v1 import common_pb2, worker_pb2_grpc


@pytest.fixture(scope="module")
def tp2_moe(tiny_moe_dirs, tmp_path_factory):
    model_dir = tiny_moe_dirs["qwen3_moe"]  # a dense layer between two sparse ones
    workdir = tmp_path_factory.mktemp("routed_tp2")
    with running_worker(model_dir, workdir, "--tp", "2", "--block-size", "4", name="moe-tp2") as worker:
        yield worker, hf_model(model_dir)


def samples_of(address: str, request_id: str, prompt: list[int], n: int, mode: int) -> tuple[Sample, ...]:
    request = common_pb2.GenerateRequest(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampling=common_pb2.SamplingParams(
            temperature=1.0, max_tokens=6, seed=3, ignore_eos=True, return_routed_experts=True
        ),
        n=n,
        output_mode=mode,
    )
    assembler = ResponseAssembler()
    with grpc.insecure_channel(address) as channel:
        for response in worker_pb2_grpc.WorkerStub(channel).Generate(request, timeout=120):
            assembler.add(response)
    return assembler.samples()


def test_tp2_worker_returns_hf_routing_for_prompt_and_tokens(tp2_moe):
    worker, reference = tp2_moe
    prompt = torch.randint(3, 512, (13,), generator=torch.Generator().manual_seed(6)).tolist()
    runs = [
        samples_of(worker.address, "stream", prompt, 2, common_pb2.OUTPUT_MODE_STREAM),
        samples_of(worker.address, "final", prompt, 1, common_pb2.OUTPUT_MODE_FINAL),
    ]
    for samples in runs:
        for sample in samples:
            prompt_rows, token_rows = sample.routed_array(prompt=True), sample.routed_array()
            assert prompt_rows.shape == (len(prompt), 2, 2) and token_rows.shape == (6, 2, 2)
            ran = prompt + list(sample.token_ids[:-1])
            ours = torch.from_numpy(np.concatenate([prompt_rows, token_rows[1:]]))  # one row per input
            agreement = compare_routing(ours, hf_router_probs(reference, ran))
            assert agreement.mismatches == 0 and agreement.near_ties <= agreement.compared // 100, agreement
    # the second request found the prompt's blocks in the cache, with their routing
    [final] = runs[1]
    assert final.diagnostics.prefix_cache_hit_blocks == 3
    assert final.prompt_routed_experts == runs[0][0].prompt_routed_experts
