"""Mixture-of-experts models (tiny random Qwen3-MoE with a dense layer among sparse ones, Qwen2-MoE
with a shared expert) against transformers, fp32 on CPU: tokens, logprobs and the routed experts."""

import math

import pytest
import torch
from fixtures.engine import (
    hf_greedy,
    hf_model,
    hf_next_token_logits,
    hf_processed_logprobs,
    make_engine,
    make_request,
    run_to_completion,
)
from fixtures.models import MOE_KINDS, build_tiny_model
from fixtures.moe import compare_routing, hf_router_probs, load_ours, tp_rank_main
from safetensors import safe_open

from epochserve.errors import ConfigError
from epochserve.worker.layers.context import LayerContext
from epochserve.worker.layers.parallel import SINGLE_DEVICE, TensorParallel
from epochserve.worker.models.config import ModelConfig
from epochserve.worker.models.llama import checkpoint_names
from epochserve.worker.models.loader import build_model
from epochserve.worker.tp.group import free_loopback_port
from epochserve.worker.weights.manifest import manifest_of_checkpoint
from epochserve.worker.weights.updater import RankWeightUpdater

PROMPT_LENGTHS = [1, 3, 4, 5, 9, 17, 30]


def prompts(vocab_size, lengths=PROMPT_LENGTHS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in lengths]


@pytest.fixture(scope="module", params=MOE_KINDS)
def moe(request, tiny_moe_dirs):
    model_dir = tiny_moe_dirs[request.param]
    return model_dir, make_engine(model_dir, block_size=4, num_kv_blocks=256), hf_model(model_dir)


def test_config_and_checkpoint_names(tiny_moe_dirs):
    qwen3 = ModelConfig.from_dir(tiny_moe_dirs["qwen3_moe"])
    assert qwen3.moe is not None and qwen3.qk_norm
    assert qwen3.moe.sparse_layers == (0, 2) and qwen3.moe.norm_topk_prob  # layer 1: mlp_only_layers
    qwen2 = ModelConfig.from_dir(tiny_moe_dirs["qwen2_moe"])
    assert qwen2.moe is not None and qwen2.qkv_bias
    assert qwen2.moe.shared_expert_intermediate_size == 64 and not qwen2.moe.norm_topk_prob
    for model_dir in tiny_moe_dirs.values():
        with safe_open(str(model_dir / "model.safetensors"), framework="pt") as handle:
            assert set(handle.keys()) == checkpoint_names(ModelConfig.from_dir(model_dir))


def test_greedy_is_token_identical_to_hf_generate(moe):
    _, engine, reference = moe
    batch = prompts(engine.model_config.vocab_size)
    requests = [
        make_request(f"g{i}", p, engine.limits, temperature=0.0, max_tokens=12, ignore_eos=True)
        for i, p in enumerate(batch)
    ]
    results = run_to_completion(engine, requests)  # one continuous batch
    for i, prompt in enumerate(batch):
        assert results[f"g{i}"][0].token_ids == hf_greedy(reference, prompt, 12), f"prompt {i}"


SAMPLING_CASES = [
    dict(temperature=1.0, top_k=k, top_p=p, min_p=m)
    for (k, p, m) in ((0, 1.0, 0.0), (20, 1.0, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.05), (40, 0.8, 0.02))
] + [dict(temperature=0.7, top_k=0, top_p=0.9, min_p=0.0)]


def test_sampled_logprobs_match_hf_processing(moe):
    _, engine, reference = moe
    batch = prompts(engine.model_config.vocab_size, [3, 9, 17], seed=1)
    requests = [
        make_request(f"s{c}-{i}", p, engine.limits, max_tokens=8, seed=100 + c, ignore_eos=True, **case)
        for c, case in enumerate(SAMPLING_CASES)
        for i, p in enumerate(batch)
    ]
    results = run_to_completion(engine, requests)
    for c, case in enumerate(SAMPLING_CASES):
        for i, prompt in enumerate(batch):
            sample = results[f"s{c}-{i}"][0]
            logits = hf_next_token_logits(reference, prompt, sample.token_ids)
            processed = hf_processed_logprobs(logits, **case)
            for pos, token in enumerate(sample.token_ids):
                expected = processed[pos, token].item()
                assert math.isfinite(expected), f"case {case}: token {token} outside the processed support"
                assert sample.logprobs[pos] == pytest.approx(expected, abs=1e-4), (case, pos)


def test_routed_experts_are_hf_router_top_k_at_every_position(moe):
    """Through the engine (chunks of prefill, then decode steps): the experts each position was
    routed to, per MoE layer, are the top-k of transformers' router at that position."""
    _, engine, reference = moe
    seen: dict[int, torch.Tensor] = {}  # position → [moe_layers, k]

    def record(module, args, output):
        positions = args[1]
        for row, position in enumerate(positions.tolist()):
            seen[position] = module.last_routed_experts()[row].clone()

    hook = engine.model.register_forward_hook(record)
    try:
        for i, prompt in enumerate(prompts(engine.model_config.vocab_size, [9, 30], seed=2)):
            seen.clear()
            request = make_request(f"r{i}", prompt, engine.limits, max_tokens=10, seed=7, ignore_eos=True)
            tokens = prompt + run_to_completion(engine, [request])[f"r{i}"][0].token_ids
            ran = tokens[:-1]  # the last token was sampled, never an input
            assert sorted(seen) == list(range(len(ran)))
            ours = torch.stack([seen[p] for p in range(len(ran))])
            agreement = compare_routing(ours, hf_router_probs(reference, ran))
            assert agreement.mismatches == 0, agreement
            assert agreement.near_ties <= agreement.compared // 100, agreement
    finally:
        hook.remove()


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_batch_invariant_mode_covers_moe(kind, tiny_moe_dirs):
    """A request's tokens and logprobs are bit-identical alone and in a batch: the experts' products
    run in fixed row slices and each token's expert outputs are summed in its own experts' order."""
    # no prefix cache: a cached prefix changes how the prompt is computed, not what it means
    engine = make_engine(
        tiny_moe_dirs[kind], block_size=4, num_kv_blocks=256, batch_invariant=True, enable_prefix_cache=False
    )
    batch = prompts(engine.model_config.vocab_size, [5, 17, 30, 2, 11], seed=3)
    requests = [
        make_request(f"b{i}", p, engine.limits, max_tokens=8, seed=i, ignore_eos=True)
        for i, p in enumerate(batch)
    ]
    alone = run_to_completion(engine, requests[:1])["b0"][0]
    together = run_to_completion(engine, requests)["b0"][0]
    assert together.token_ids == alone.token_ids
    assert together.logprobs == alone.logprobs


def test_expert_width_that_does_not_split_is_refused(tiny_moe_dirs):
    config = ModelConfig.from_dir(tiny_moe_dirs["qwen2_moe"])  # expert width 32
    with pytest.raises(ConfigError, match="expert MLP width 32 is not divisible by TP size 3"):
        build_model(config, LayerContext(tp=TensorParallel(rank=0, size=3)), torch.device("cpu"), 64)


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_weight_update_swaps_stacked_experts_in_place(kind, tiny_moe_dirs, tmp_path):
    """The manifest names the checkpoint's per-expert tensors; staging stacks them into twins of
    the experts' parameters, and the swap copies them in place: the model is then the new one."""
    model = load_ours(tiny_moe_dirs[kind])
    experts = next(m for m in model.modules() if hasattr(m, "w13"))
    address = experts.w13.data_ptr()
    new_dir = build_tiny_model(kind, tmp_path / "v2", seed=1)
    manifest_of_checkpoint(2, new_dir).write(new_dir)

    updater = RankWeightUpdater(model, SINGLE_DEVICE)
    before = updater.fingerprint()
    updater.begin_stage(2, str(new_dir))
    result = updater.wait(60)
    assert result is not None and result.staged is not None, result
    fingerprint = updater.swap(2)

    assert fingerprint == updater.fingerprint() != before
    assert experts.w13.data_ptr() == address
    fresh = dict(load_ours(new_dir).named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, fresh[name]), name


@pytest.mark.processes  # starts two TP ranks
@pytest.mark.parametrize("kind", MOE_KINDS)
def test_tp2_over_gloo_matches_hf(kind, tiny_moe_dirs, tmp_path):
    """Each rank holds half of every expert's width: logits, routing and greedy tokens still match
    transformers, and a weight update swaps both ranks' slices to the new checkpoint."""
    model_dir = tiny_moe_dirs[kind]
    new_dir = build_tiny_model(kind, tmp_path / "v2", seed=1)
    manifest_of_checkpoint(2, new_dir).write(new_dir)
    batch = prompts(512, [7, 23], seed=4)
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    init = f"tcp://127.0.0.1:{free_loopback_port()}"
    ranks = [
        context.Process(target=tp_rank_main, args=(r, 2, init, model_dir, new_dir, batch, queue))
        for r in range(2)
    ]
    for process in ranks:
        process.start()
    try:
        report = queue.get(timeout=300)
    finally:
        for process in ranks:
            process.join(60)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in ranks)
    swapped, live = report["fingerprints"]
    assert swapped == live
    for version, reference in (("before", hf_model(model_dir)), ("after", hf_model(new_dir))):
        for i, prompt in enumerate(batch):
            logits, routed = (torch.tensor(values) for values in report[version][i][:2])
            expected = hf_next_token_logits(reference, prompt[:1], prompt[1:])
            logprobs = torch.log_softmax(logits[:-1], dim=-1)
            assert torch.allclose(logprobs, torch.log_softmax(expected, dim=-1), atol=1e-4, rtol=0)
            agreement = compare_routing(routed, hf_router_probs(reference, prompt))
            assert agreement.mismatches == 0 and agreement.near_ties <= agreement.compared // 100, agreement
            if version == "before":
                assert report[version][i][2] == hf_greedy(reference, prompt, 8)
