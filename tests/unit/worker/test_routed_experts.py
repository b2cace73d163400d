"""Routing replay (return_routed_experts) through the engine, fp32 on CPU, tiny random Qwen3-MoE (a
dense layer among sparse ones) and Qwen2-MoE (shared expert): the experts returned for every prompt
position and every sampled token are the top-k of transformers' router at the same positions,
across chunked prefill, n > 1, both output modes, prefix-cache hits and preemptions; a dense model
refuses the option."""

import numpy as np
import pytest
import torch
from fixtures.engine import hf_model, make_engine, make_request, run_to_completion
from fixtures.models import MOE_KINDS
from fixtures.moe import compare_routing, hf_router_probs

from epochserve.errors import InvalidRequestError
from epochserve.proto.convert import OutputMode
from epochserve.proto.results import ResponseAssembler
from epochserve.worker.serving.responses import ResponseBuilder, WorkerStamp

SAMPLED = dict(temperature=1.0, top_p=0.9, ignore_eos=True)
ASK = dict(return_routed_experts=True, **SAMPLED)


def random_prompt(length: int, seed: int, vocab_size: int = 512) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (length,), generator=generator).tolist()


@pytest.fixture(scope="module", params=MOE_KINDS)
def moe(request, tiny_moe_dirs):
    model_dir = tiny_moe_dirs[request.param]
    return model_dir, hf_model(model_dir)


def positions_routing(sample) -> torch.Tensor:
    """[positions, layers, k] for every input position the sample's tokens came from: the prompt's,
    then one per sampled token after the first (the first's is the last prompt position's)."""
    rows = sample.prompt_routed_experts + sample.routed_experts[1:]
    return torch.from_numpy(np.stack(rows).astype(np.int64))


def assert_is_hf_routing(sample, prompt: list[int], reference) -> None:
    assert len(sample.prompt_routed_experts) == len(prompt)
    assert len(sample.routed_experts) == len(sample.token_ids)
    assert np.array_equal(sample.routed_experts[0], sample.prompt_routed_experts[-1])
    ran = prompt + sample.token_ids[:-1]  # the last token was sampled, never an input
    agreement = compare_routing(positions_routing(sample), hf_router_probs(reference, ran))
    assert agreement.mismatches == 0, agreement
    assert agreement.near_ties <= agreement.compared // 100, agreement


def test_routed_experts_are_hf_router_top_k_for_prompt_and_tokens(moe):
    """Chunked prefill beside decodes, n = 2 (sample 1 hits sample 0's prompt blocks), STREAM and
    FINAL, beside requests that did not ask (their outputs carry no routing)."""
    model_dir, reference = moe
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=256, max_num_batched_tokens=16)
    prompts = [random_prompt(n, seed=n) for n in (1, 6, 23)]
    requests = [
        make_request(f"r{i}", p, engine.limits, n=2, seed=i, max_tokens=7, **ASK)
        for i, p in enumerate(prompts)
    ]
    final = OutputMode.FINAL
    requests.append(make_request("final", prompts[2], engine.limits, max_tokens=5, output_mode=final, **ASK))
    requests.append(make_request("plain", prompts[1], engine.limits, max_tokens=5, **SAMPLED))
    results = run_to_completion(engine, requests)
    for i, prompt in enumerate(prompts):
        for sample in results[f"r{i}"].values():
            assert_is_hf_routing(sample, prompt, reference)
    assert_is_hf_routing(results["final"][0], prompts[2], reference)
    plain = results["plain"][0]
    assert plain.routed_experts == plain.prompt_routed_experts == []


def test_a_prefix_cache_hit_returns_the_routing_computed_without_the_cache(tiny_moe_dirs):
    model_dir = tiny_moe_dirs["qwen3_moe"]
    prompt = random_prompt(19, seed=3)
    ask = dict(max_tokens=3, seed=1, **ASK)
    uncached = make_engine(model_dir, block_size=4, num_kv_blocks=64, enable_prefix_cache=False)
    expected = run_to_completion(uncached, [make_request("u", prompt, uncached.limits, **ask)])["u"][0]

    engine = make_engine(model_dir, block_size=4, num_kv_blocks=64)
    # A request that did not ask caches the prompt's blocks without routing: one that asks computes
    # the prompt itself, then gives its routing to those cache entries; the next one hits them.
    plain = run_to_completion(engine, [make_request("plain", prompt, engine.limits, max_tokens=2)])
    asked = run_to_completion(engine, [make_request("asked", prompt, engine.limits, **ask)])["asked"][0]
    hit = run_to_completion(engine, [make_request("hit", prompt, engine.limits, **ask)])["hit"][0]
    assert plain["plain"][0].finish.prefix_cache_hit_blocks == 0
    assert asked.finish.prefix_cache_hit_blocks == 0
    assert hit.finish.prefix_cache_hit_blocks == 4  # (19 - 1) // 4 blocks
    for sample in (asked, hit):
        for rows in ("prompt_routed_experts", "routed_experts"):
            assert np.array_equal(np.stack(getattr(sample, rows)), np.stack(getattr(expected, rows))), rows

    # The routing lives with the cache entry: a new version drops both (a block forgets its stale
    # routing when it is reused), so a request of the new version computes its prompt's again.
    engine.set_policy_version(1)
    assert engine.block_manager.usage().num_cached == 0
    again = run_to_completion(engine, [make_request("v1", prompt, engine.limits, **ask)])["v1"][0]
    assert again.finish.prefix_cache_hit_blocks == 0
    assert np.array_equal(np.stack(again.prompt_routed_experts), np.stack(expected.prompt_routed_experts))


def test_routing_survives_preemption_without_duplicates(tiny_moe_dirs):
    # A KV pool too small for the batch: samples are preempted and recompute their tokens; the
    # positions returned before a preemption keep their first routing, none is returned twice.
    model_dir = tiny_moe_dirs["qwen2_moe"]
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=24, max_num_batched_tokens=16)
    prompts = [random_prompt(21, seed=30 + i) for i in range(4)]
    requests = [
        make_request(f"q{i}", p, engine.limits, max_tokens=20, seed=i, **ASK) for i, p in enumerate(prompts)
    ]
    results = run_to_completion(engine, requests)
    assert sum(results[f"q{i}"][0].finish.num_preemptions for i in range(4)) > 0
    reference = hf_model(model_dir)
    for i, prompt in enumerate(prompts):
        assert_is_hf_routing(results[f"q{i}"][0], prompt, reference)


def test_the_wire_and_the_client_carry_the_same_routing_in_both_output_modes(tiny_moe_dirs):
    engine = make_engine(tiny_moe_dirs["qwen3_moe"], block_size=4, num_kv_blocks=64)
    prompt = random_prompt(9, seed=4)
    for mode in OutputMode:
        request = make_request(f"w-{mode}", prompt, engine.limits, n=2, max_tokens=4, output_mode=mode, **ASK)
        engine.add_request(request)
        builder, assembler = ResponseBuilder(WorkerStamp("w0", 1, "torch"), mode), ResponseAssembler()
        outputs = []
        while engine.has_work():
            batch = engine.step()
            outputs += batch
            for message in builder.responses(batch):
                assembler.add(message)
        for sample in assembler.samples():
            mine = [o for o in outputs if o.sample_index == sample.sample_index]
            tokens = np.concatenate([o.routed_experts for o in mine if o.routed_experts is not None])
            [prompt_rows] = [o.prompt_routed_experts for o in mine if o.prompt_routed_experts is not None]
            assert sample.routed_top_k == 2 and len(sample.routed_experts[0]) == 2 * 2  # 2 MoE layers
            assert np.array_equal(sample.routed_array(), tokens)
            assert np.array_equal(sample.routed_array(prompt=True), prompt_rows)
            assert sample.routed_array().shape == (4, 2, 2)
            assert sample.routed_array(prompt=True).shape == (len(prompt), 2, 2)


def test_a_dense_model_refuses_routed_experts(tiny_model_dirs):
    engine = make_engine(tiny_model_dirs["llama"], block_size=4, num_kv_blocks=16)
    request = make_request("dense", [5, 6, 7], engine.limits, max_tokens=2, return_routed_experts=True)
    with pytest.raises(InvalidRequestError, match=r"return_routed_experts.*dense"):
        engine.add_request(request)
    assert not engine.has_work()
