"""The engine on CUDA (Triton kernels, decode CUDA graphs) against transformers, and batch invariance.

Run on a GPU machine: `python -P -m pytest -q -s tests/gpu/test_engine_gpu.py` (skips without CUDA).

Models: a small random Llama (4 layers, GQA 8/2, standard 0.02 init) built by transformers, and
for the bf16 greedy and logprob checks also SmolLM2-135M-Instruct (a trained model: 30 layers, GQA
9/3, tied embeddings), saved in bf16, when it has been prepared on the machine (bundled.py's
cache; bench/device_decode.sh prepares it from a carried wheel).
- fp32 on the GPU: the engine (Triton kernels, whose fp32 dots use TF32, and CUDA graphs) must
  match transformers' fp32 greedy tokens exactly and its logprobs within 2e-2.
- The checkpoint is saved in bf16, so both sides hold the same numbers, and the engine keeps its
  lm_head table in bf16 with fp32 arithmetic (layers/vocab.py), transformers an fp32 copy of it.
- bf16 weights, fp32 lm_head on both sides: two correct bf16 implementations may pick different
  tokens where the top two logits are closer than their rounding. Greedy sequences must be
  identical up to such a near-tie: at the first difference, transformers' own fp32 margin between
  the two tokens must be below BF16_LOGIT_TIE (else it is a bug), and the rest is not compared.
- Processed logprobs of sampled sequences against transformers' fp32 recompute on the same bf16
  weights: in the median no further from it than transformers' own bf16 forward (within 2x +
  1e-3), and the worst token under BF16_LOGPROB_WORST. bf16 activations round each layer by ~2^-8
  relative, so a deep trained model (SmolLM2: 30 layers) drifts more than the random 4-layer one,
  with rare tokens far out under either implementation; the observed median/max of both are
  printed for docs/benchmarks.md.
"""

from __future__ import annotations

import statistics

import pytest
import torch
from fixtures.engine import hf_next_token_logits, make_engine, make_request, run_to_completion
from fixtures.models import build_tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

BF16_LOGIT_TIE = 0.25
# The worst single token's |Δ processed logprob| against the fp32 recompute. SmolLM2 (30 layers):
# one token in a few hundred moves by up to ~1 nat under *either* bf16 forward — on the CPU the same
# token was 1.07 off in transformers' bf16 and 0.51 in the engine's (2026-12-03); on an H200 the
# engine's worst was 0.77, transformers' 0.14 (on other tokens).
BF16_LOGPROB_WORST = {"llama": 0.1, "smollm2-bf16": 1.5}


_LLAMA_SHAPE = dict(
    vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
    num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.02, save_dtype=torch.bfloat16,
)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model("llama", tmp_path_factory.mktemp("gpu") / "llama", **_LLAMA_SHAPE)


@pytest.fixture(scope="module", params=["random-llama", "smollm2"])
def bf16_model_dir(request, model_dir, tmp_path_factory):
    """The random Llama, then SmolLM2 in bf16 (both sides of a comparison then hold the same numbers)."""
    if request.param == "random-llama":
        return model_dir
    from transformers import AutoModelForCausalLM

    from epochserve.worker.models.bundled import smollm2_dir

    source = smollm2_dir()
    if not (source / "config.json").is_file():
        pytest.skip(f"SmolLM2 is not prepared at {source}")
    out = tmp_path_factory.mktemp("gpu") / "smollm2-bf16"
    AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(out)
    return out


def hf_model(model_dir, dtype: torch.dtype, fp32_head: bool):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).cuda().eval()
    if fp32_head:
        # A new fp32 copy of the table (with tied embeddings, .float() on the head would also
        # turn the shared embedding table, and so every layer's input, into fp32).
        head = model.lm_head
        head.weight = torch.nn.Parameter(head.weight.detach().float().clone(), requires_grad=False)
        head.register_forward_pre_hook(lambda _module, args: (args[0].float(),))
    return model


def prompts(n: int, seed: int = 0, vocab: int = 4096) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 200, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for length in lengths]


def greedy(engine, batch, new_tokens=24):
    return [result.token_ids for result in greedy_results(engine, batch, new_tokens)]


def greedy_results(engine, batch, new_tokens=24, num_top_logprobs=2):
    requests = [
        make_request(f"g{i}", p, engine.limits, temperature=0.0, max_tokens=new_tokens, ignore_eos=True,
                     num_top_logprobs=num_top_logprobs)
        for i, p in enumerate(batch)
    ]  # fmt: skip
    results = run_to_completion(engine, requests)
    return [results[f"g{i}"][0] for i in range(len(batch))]


@torch.no_grad()
def hf_greedy(model, prompt, new_tokens=24):
    out = model.generate(torch.tensor([prompt], device="cuda"), max_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0)  # fmt: skip
    return out[0, len(prompt) :].tolist()


def test_fp32_on_gpu_matches_transformers(model_dir):
    engine = make_engine(model_dir, device="cuda", dtype="float32")
    assert engine.kernel_mode == "triton+graphs"
    reference = hf_model(model_dir, torch.float32, fp32_head=False)
    batch = prompts(8)
    ours = greedy(engine, batch)
    assert ours == [hf_greedy(reference, p) for p in batch]
    requests = [make_request(f"s{i}", p, engine.limits, seed=i, max_tokens=16, ignore_eos=True)
                for i, p in enumerate(batch)]  # fmt: skip
    results = run_to_completion(engine, requests)
    for i, prompt in enumerate(batch):
        sample = results[f"s{i}"][0]
        expected = torch.log_softmax(hf_next_token_logits(reference, prompt, sample.token_ids), -1)
        picked = expected[torch.arange(len(sample.token_ids)), torch.tensor(sample.token_ids, device="cuda")]
        assert (picked.cpu() - torch.tensor(sample.logprobs)).abs().max() < 2e-2


def test_bf16_greedy_matches_transformers_up_to_near_ties(bf16_model_dir):
    model_dir = bf16_model_dir
    engine = make_engine(model_dir, device="cuda", dtype="bfloat16")
    assert engine.model.lm_head.weight.dtype == torch.bfloat16 and engine.model.lm_head.fp32_logits
    batch = prompts(12)
    check_greedy_up_to_near_ties(model_dir, batch, greedy(engine, batch))


@pytest.mark.parametrize("norm_gemv", ["1", "0"])
def test_batch_1_greedy_matches_transformers_with_and_without_norms_folded(
    norm_gemv, bf16_model_dir, monkeypatch
):
    """EPOCHSERVE_NORM_GEMV=1 (the default: ops.norm_then_linear, each norm inside the 1-row
    projection after it) and =0: greedy decoding one request at a time, so every decode step takes
    the 1-row kernels, matches transformers up to near-ties."""
    monkeypatch.setenv("EPOCHSERVE_NORM_GEMV", norm_gemv)
    engine = make_engine(bf16_model_dir, device="cuda", dtype="bfloat16")
    assert engine.model.lm_head.ops.norm_into_gemv == (norm_gemv == "1")
    batch = prompts(4, seed=2, vocab=engine.limits.vocab_size)
    check_greedy_up_to_near_ties(bf16_model_dir, batch, [greedy(engine, [prompt])[0] for prompt in batch])


def test_moe_batch_1_greedy_with_norms_folded_equals_without_up_to_near_ties(
    bf16_model_dir, tmp_path_factory, monkeypatch
):
    """The tiny random Qwen3-MoE with and without the norm fold (which also folds the router's
    top-k into its product). Checked against the engine without the fold, not transformers: its
    bf16 router logits differ from the engine's fp32 ones (#21), so near-ties pick other experts,
    and 3 of 4 greedy prompts leave transformers' path with and without the fold alike (H100 and
    H200, 2026-12-07). Each output equals the unfolded one up to its first difference, where the
    unfolded engine's own top-2 margin (temperature-1 logprobs) must be a near-tie."""
    if bf16_model_dir.name != "llama":
        pytest.skip("the MoE model once (it does not depend on bf16_model_dir)")
    model_dir = tmp_path_factory.mktemp("gpu") / "qwen3_moe"
    build_tiny_model("qwen3_moe", model_dir, save_dtype=torch.bfloat16)
    outputs = {}
    for norm_gemv in ("0", "1"):
        monkeypatch.setenv("EPOCHSERVE_NORM_GEMV", norm_gemv)
        engine = make_engine(model_dir, device="cuda", dtype="bfloat16")
        assert engine.model.lm_head.ops.norm_into_gemv == (norm_gemv == "1")
        batch = prompts(8, seed=2, vocab=engine.limits.vocab_size)
        outputs[norm_gemv] = [greedy_results(engine, [prompt])[0] for prompt in batch]
        del engine
    exact, ties = 0, []
    for plain, folded in zip(outputs["0"], outputs["1"], strict=True):
        if plain.token_ids == folded.token_ids:
            exact += 1
            continue
        at = next(i for i, (a, b) in enumerate(zip(plain.token_ids, folded.token_ids, strict=True)) if a != b)
        (first, second), (best, runner_up) = plain.top_logprobs[at]
        assert (first, second) == (plain.token_ids[at], folded.token_ids[at]), "not the runner-up"
        ties.append(best - runner_up)
    print(f"norm fold, qwen3_moe: {exact}/{len(ties) + exact} identical; margins at the differences: {ties}")
    assert all(t < BF16_LOGIT_TIE for t in ties), ties


def check_greedy_up_to_near_ties(model_dir, batch: list[list[int]], outputs: list[list[int]]) -> None:
    """Each greedy output equals transformers' (bf16, fp32 lm_head) up to its first difference, where
    transformers' own fp32 margin between the two tokens must be a near-tie (BF16_LOGIT_TIE)."""
    reference = hf_model(model_dir, torch.bfloat16, fp32_head=True)
    fp32 = hf_model(model_dir, torch.bfloat16, fp32_head=False).float()
    exact, ties = 0, []
    for prompt, ours in zip(batch, outputs, strict=True):
        theirs = hf_greedy(reference, prompt)
        if ours == theirs:
            exact += 1
            continue
        at = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
        logits = hf_next_token_logits(fp32, prompt, [*theirs[:at], theirs[at]])[at]
        ties.append((logits[theirs[at]] - logits[ours[at]]).item())
    print(
        f"bf16 greedy ({model_dir.name}): {exact}/{len(batch)} identical; "
        f"fp32 margins at the first difference: {ties}"
    )
    assert all(abs(t) < BF16_LOGIT_TIE for t in ties), ties


def test_processed_logprobs_within_bf16_tolerance_of_fp32_recompute(bf16_model_dir):
    from transformers.generation.logits_process import TopPLogitsWarper

    model_dir = bf16_model_dir
    engine = make_engine(model_dir, device="cuda", dtype="bfloat16")
    fp32 = hf_model(model_dir, torch.bfloat16, fp32_head=False).float()
    bf16 = hf_model(model_dir, torch.bfloat16, fp32_head=True)  # transformers' own bf16 forward
    batch = prompts(8, seed=1)
    requests = [make_request(f"s{i}", p, engine.limits, temperature=1.0, top_p=0.95, seed=i, max_tokens=32,
                             ignore_eos=True) for i, p in enumerate(batch)]  # fmt: skip
    results = run_to_completion(engine, requests)

    def processed(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
        logits = hf_next_token_logits(model, prompt, tokens)
        logprobs = torch.log_softmax(TopPLogitsWarper(0.95)(None, logits.clone()), dim=-1)
        return logprobs[torch.arange(len(tokens)), torch.tensor(tokens, device="cuda")].cpu()

    gaps, hf_gaps = [], []
    for i, prompt in enumerate(batch):
        sample = results[f"s{i}"][0]
        expected = processed(fp32, prompt, sample.token_ids)
        gaps += (expected - torch.tensor(sample.logprobs)).abs().tolist()
        hf_gaps += [
            g for g in (expected - processed(bf16, prompt, sample.token_ids)).abs().tolist() if g < 1e9
        ]
    ours, hf = (f"median {statistics.median(g):.4f}, max {max(g):.4f}" for g in (gaps, hf_gaps))
    print(
        f"|Δ processed logprob| vs fp32 recompute ({model_dir.name}): engine {ours}; transformers bf16 {hf}"
    )
    # bf16 activations round each layer by ~2^-8: a deep trained model drifts further from fp32 than a
    # 4-layer random one. Typically the engine may drift no more than transformers' own bf16 forward;
    # single tokens are heavy-tailed under either (module docstring), so the worst gets a bound.
    assert statistics.median(gaps) < 2 * statistics.median(hf_gaps) + 1e-3
    assert max(gaps) < BF16_LOGPROB_WORST[model_dir.name]


def _target_and_others(engine, others: int, seed: int):
    target = make_request("target", prompts(1, seed=99)[0], engine.limits, temperature=1.0, seed=7,
                          max_tokens=24, ignore_eos=True)  # fmt: skip
    rest = [make_request(f"o{seed}-{i}", p, engine.limits, temperature=0.8, seed=i, max_tokens=8 + i % 20,
                         ignore_eos=True) for i, p in enumerate(prompts(others, seed=seed))]  # fmt: skip
    return [target, *rest]


def _bytes(sample) -> tuple[bytes, bytes]:
    return torch.tensor(sample.token_ids).numpy().tobytes(), torch.tensor(sample.logprobs).numpy().tobytes()


@pytest.mark.parametrize("batch_invariant", [True, False])
def test_batch_invariance_in_bytes(model_dir, batch_invariant):
    engine = make_engine(model_dir, device="cuda", dtype="bfloat16", batch_invariant=batch_invariant,
                         enable_prefix_cache=False)  # fmt: skip
    alone = _bytes(run_to_completion(engine, _target_and_others(engine, 0, 0))["target"][0])
    differs = []
    for others in (2, 7, 32, 128):
        together = _bytes(run_to_completion(engine, _target_and_others(engine, others, others))["target"][0])
        differs.append(together != alone)
    print(f"batch_invariant={batch_invariant}: differs alone vs batches of 2/7/32/128 others: {differs}")
    if batch_invariant:
        assert not any(differs)


def test_top_p_support_sizes_are_batch_invariant_in_bytes(model_dir):
    """batch_invariant keeps its guarantee with the fp64 top-p boundary: the target's tokens,
    processed logprobs and support sizes are the same bytes alone and among 2/7/32 top-p others."""
    engine = make_engine(model_dir, device="cuda", dtype="bfloat16", batch_invariant=True,
                         enable_prefix_cache=False)  # fmt: skip

    def target_alone_or_among(others: int):
        target = make_request("target", prompts(1, seed=98)[0], engine.limits, temperature=1.2, top_p=0.9,
                              seed=7, max_tokens=24, ignore_eos=True, return_support_size=True)  # fmt: skip
        rest = [make_request(f"o{others}-{i}", p, engine.limits, temperature=1.0, top_p=0.8, min_p=0.01,
                             seed=i, max_tokens=8 + i % 20, ignore_eos=True)
                for i, p in enumerate(prompts(others, seed=others))]  # fmt: skip
        sample = run_to_completion(engine, [target, *rest])["target"][0]
        assert len(sample.support_sizes) == 24
        return (*_bytes(sample), torch.tensor(sample.support_sizes).numpy().tobytes())

    alone = target_alone_or_among(0)
    assert all(target_alone_or_among(others) == alone for others in (2, 7, 32))


def test_sampling_noise_is_the_same_on_cpu_and_gpu():
    from epochserve.worker.engine.sampling_noise import gumbel_noise, noise_key, uniform_bits

    keys = torch.tensor([noise_key(3, i, 5) for i in range(4)])
    assert torch.equal(uniform_bits(keys, 50000), uniform_bits(keys.cuda(), 50000).cpu())
    cpu, gpu = gumbel_noise(keys, 50000), gumbel_noise(keys.cuda(), 50000).cpu()
    print(
        f"gumbel noise CPU vs GPU: {(cpu != gpu).float().mean():.2%} of values differ, max |Δ| "
        f"{(cpu - gpu).abs().max():.2e}"
    )
    assert torch.allclose(cpu, gpu, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_async_scheduling_gives_the_synchronous_outputs_on_gpu(model_dir, batch_invariant):
    """Run-ahead on CUDA (decode graphs fed their input tokens on the device) against the synchronous
    path: the same token ids and logprobs, compared exactly. Without batch_invariant a stop shrinks
    the next batch, which may change other rows' low bits (another graph bucket), so that case runs
    without stops; with it, half the requests stop on a token they generate."""

    def run(mode: str, stops: dict[int, int]):
        engine = make_engine(model_dir, device="cuda", dtype="bfloat16", async_scheduling=mode,
                             batch_invariant=batch_invariant, num_kv_blocks=1024)  # fmt: skip
        requests = [
            make_request(f"r{i}", p, engine.limits, temperature=0.0 if i % 2 else 1.0, seed=i, max_tokens=20,
                         ignore_eos=True, stop_token_ids=[stops[i]] if i in stops else [])
            for i, p in enumerate(prompts(6, seed=5))
        ]  # fmt: skip
        results = run_to_completion(engine, requests)
        ahead = engine.num_run_ahead_steps
        del engine
        torch.cuda.empty_cache()
        return {rid: (s[0].token_ids, s[0].logprobs) for rid, s in results.items()}, ahead

    stops = {}
    if batch_invariant:
        plain, _ = run("off", {})
        stops = {i: plain[f"r{i}"][0][6 + i] for i in (0, 1, 2)}
    sync, none = run("off", stops)
    ahead, steps = run("on", stops)
    assert none == 0 and steps >= 10
    assert ahead == sync


@pytest.mark.parametrize("batch_invariant", [False, True])
def test_scoring_a_sampled_completion_on_gpu(model_dir, batch_invariant):
    """A trainer scores prompt + completion (return_prompt_logprobs) and compares with the logprobs
    the engine returned when it sampled the completion (bf16, temperature 1, top_p 0.9). The two
    passes differ in shape (decode steps of one row vs one prefill over the whole text), so bf16
    activations may round differently; each pass is within BF16_LOGPROB_WORST of the fp32 recompute
    (test above), so the two are within twice that. The observed difference is printed for the docs
    (whether it is bit-identical depends on whether prefill and decode kernels share their sums)."""
    engine = make_engine(model_dir, device="cuda", dtype="bfloat16", batch_invariant=batch_invariant,
                         enable_prefix_cache=False)  # fmt: skip
    params = dict(temperature=1.0, top_p=0.9, seed=3)
    deltas, identical = [], 0

    def one(request_id: str, prompt: list[int], **options):
        request = make_request(request_id, prompt, engine.limits, ignore_eos=True, **params, **options)
        return run_to_completion(engine, [request])[request_id][0]

    for i, prompt in enumerate(prompts(8, seed=41)):
        sampled = one(f"s{i}", prompt, max_tokens=32)
        scored = one(f"p{i}", prompt + list(sampled.token_ids), max_tokens=1, return_prompt_logprobs=True)
        again = torch.tensor(scored.prompt_logprobs[len(prompt) - 1 :])
        first = torch.tensor(sampled.logprobs)
        assert again.shape == first.shape and torch.isfinite(again).all()
        deltas.append((again - first).abs().max().item())
        identical += int(torch.equal(again, first))
    worst, median = max(deltas), statistics.median(deltas)
    print(f"\nscoring vs sampling, bf16, batch_invariant={batch_invariant}: max |Δ| per completion: "
          f"median {median:.2e}, worst {worst:.2e}; bit-identical {identical}/8")  # fmt: skip
    assert worst <= 2 * BF16_LOGPROB_WORST["llama"]


def test_overlap_decodes_the_new_version_on_graphs_captured_on_its_twins(model_dir, tmp_path):
    """drain=overlap on CUDA: v2's decode steps replay graphs captured on the staged twins, v0's the
    live graphs, both with run-ahead. The twins' graphs are captured once staging is verified, between
    two steps of the old version (prepare_twins), not after the commit. batch_invariant: each sample
    equals its version's fresh engine alone in bytes. Two rollouts: the second stages into the
    promoted twins' buffers and reuses the graphs captured during the first."""
    from epochserve.controlplane.store.records import DrainPolicy
    from epochserve.worker.weights.manifest import manifest_of_checkpoint

    settings = dict(device="cuda", dtype="bfloat16", batch_invariant=True, enable_prefix_cache=False)
    versions = {0: model_dir}
    for version, seed in ((2, 7), (3, 9)):
        versions[version] = build_tiny_model("llama", tmp_path / f"v{version}", seed=seed, **_LLAMA_SHAPE)
        manifest_of_checkpoint(version, versions[version]).write(versions[version])
    texts = prompts(4, seed=77)
    engine = make_engine(model_dir, **settings)
    limits = engine.limits

    def request(name: str, i: int):
        return make_request(name, texts[i], limits, temperature=1.0, top_p=0.9, seed=i,
                            max_tokens=40 if name.startswith("old") else 24, ignore_eos=True)  # fmt: skip

    results: dict = {}
    captured = None
    for new in (2, 3):
        old = engine.policy_version
        for i in (0, 1):
            engine.add_request(request(f"old{old}-{i}", i))
        for _ in range(3):
            _record(results, engine.step())
        engine.weights.stage(new, str(versions[new]), None)
        assert engine.weights.wait(120).staged.runnable
        engine.weights.take_result()
        engine.prepare_twins()  # with an old-version step in flight (run-ahead)
        twin_graphs = engine.runner.twin_graphs
        assert twin_graphs is not None and twin_graphs.graphs  # before the commit
        assert captured is None or twin_graphs is captured  # the second rollout reuses the capture
        captured = twin_graphs
        for _ in range(3):
            _record(results, engine.step())
        _record(results, engine.begin_drain(new, DrainPolicy.OVERLAP))
        for i in (2, 3):
            engine.add_request(request(f"new{new}-{i}", i))
        while engine.has_work():
            _record(results, engine.step())
        assert engine.runner.twin_graphs is captured  # v's decode steps captured nothing more
        engine.weights.swap(new)
        engine.complete_swap(new)
    assert engine.runner.twin_graphs is captured  # the second rollout replayed the first's capture
    assert engine.num_run_ahead_steps > 0
    del engine
    for name, got in results.items():
        version, i = int(name[3:].split("-")[0]), int(name.split("-")[1])
        fresh = make_engine(versions[version], **settings)
        reference = _bytes(run_to_completion(fresh, [request(name, i)])[name][0])
        assert _bytes(got) == reference, name


def _record(results: dict, outputs) -> None:
    from fixtures.engine import SampleResult

    for out in outputs:
        sample = results.setdefault(out.request_id, SampleResult())
        sample.token_ids += out.token_ids
        sample.logprobs += out.processed_logprobs


@pytest.mark.parametrize("switch", ["EPOCHSERVE_PDL", "EPOCHSERVE_ATTENTION_FOLD"])
@pytest.mark.parametrize("kind", ["llama", "qwen3_moe"])
def test_launch_switches_change_no_bit_on_gpu(switch, kind, model_dir, tmp_path_factory, monkeypatch):
    """Two switches that change how kernels are launched, never what they compute: programmatic
    dependent launch (kernels/pdl.py) and attention partitions folded by their last program
    (kernels/paged_attention_kernels.py). Decode on CUDA graphs with each on gives, to the bit, the
    tokens and logprobs without it — greedy and sampled requests, alone (batch 1: the gemv and
    few-token MoE paths) and together. A kernel that read its predecessor's output before its wait,
    or a fold that read a partition before it was written, would differ here."""
    from epochserve.kernels.pdl import pdl_enabled

    if switch == "EPOCHSERVE_PDL" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm_90 or later")
    directory = model_dir
    if kind == "qwen3_moe":
        directory = build_tiny_model(kind, tmp_path_factory.mktemp("gpu") / kind, save_dtype=torch.bfloat16)

    def run(flag: str) -> dict:
        monkeypatch.setenv(switch, flag)
        pdl_enabled.cache_clear()
        engine = make_engine(directory, device="cuda", dtype="bfloat16", num_kv_blocks=512)
        outputs = {}
        for batch in (1, 6):
            requests = [
                make_request(f"b{batch}-{i}", p, engine.limits, temperature=1.0 if i % 2 else 0.0, seed=i,
                             max_tokens=16, ignore_eos=True)
                for i, p in enumerate(prompts(batch, seed=batch, vocab=engine.limits.vocab_size))
            ]  # fmt: skip
            for rid, samples in run_to_completion(engine, requests).items():
                outputs[rid] = _bytes(samples[0])
        del engine
        torch.cuda.empty_cache()
        return outputs

    try:
        assert run("1") == run("0")
    finally:
        pdl_enabled.cache_clear()
