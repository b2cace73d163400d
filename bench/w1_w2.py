"""W1 (latency) and W2 (throughput) of docs/design.md §8 on an 8B Llama-3.1 shape with random bf16 weights.

One run measures, on the same GPU: the HBM copy bandwidth and bf16 matmul peak (the roofline's
inputs), transformers as the peer (W1: `generate` with a static cache, compiled; W2: `generate_batch`
with paged attention), then the engine (W1, W2, and W2 in batch_invariant mode). Prints a table last.
    python bench/w1_w2.py [--skip-peer] [--json OUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import LLAMA31_8B, kv_bytes_per_token, measure_ceilings, wall, weight_bytes, write_config

W1_PROMPT, W1_NEW = 128, 256
W2_REQUESTS, W2_PROMPT, W2_NEW = 256, 512, 256


def rooflines(ceilings: dict[str, float]) -> dict[str, float]:
    bw, peak = ceilings["hbm_bytes_per_s"], ceilings["bf16_flop_per_s"]
    weights = weight_bytes(LLAMA31_8B)
    w1 = bw / weights
    params = weights / 2
    prefill_s = 2 * params * W2_REQUESTS * W2_PROMPT / peak
    kv = kv_bytes_per_token(LLAMA31_8B)
    decode_bytes = sum(weights + W2_REQUESTS * (W2_PROMPT + t) * kv for t in range(W2_NEW))
    w2 = W2_REQUESTS * W2_NEW / (prefill_s + decode_bytes / bw)
    return {"w1_tokens_per_s": w1, "w2_output_tokens_per_s": w2}


def random_prompts(count: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1000, 100000, (count, length), generator=g).tolist()


def hf_config():
    from transformers import LlamaConfig

    return LlamaConfig(**{k: v for k, v in LLAMA31_8B.items() if k not in ("architectures", "model_type")})


def peer_w1(results: dict) -> None:
    """transformers `generate`, static cache, compiled (its fastest single-request path)."""
    from transformers import AutoModelForCausalLM

    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config(), dtype=torch.bfloat16).eval()
    prompt = torch.tensor(random_prompts(1, W1_PROMPT, 1), device="cuda")
    # A static cache makes `generate` compile the decoding forward itself (its compile_config);
    # wrapping forward in torch.compile by hand breaks its CUDA-graph buffers.
    kwargs = dict(
        max_new_tokens=W1_NEW, min_new_tokens=W1_NEW, do_sample=False, cache_implementation="static"
    )
    for _ in range(2):
        model.generate(prompt, **kwargs)  # compile and warm up
    times = [wall(lambda: model.generate(prompt, **kwargs)) for _ in range(3)]
    results["peer_w1_tokens_per_s"] = W1_NEW / statistics.median(times)


def peer_w2(results: dict) -> None:
    """transformers `generate_batch`: continuous batching over paged attention."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(
            hf_config(), dtype=torch.bfloat16, attn_implementation="paged|sdpa"
        )
    model.eval()
    gen = GenerationConfig(max_new_tokens=W2_NEW, do_sample=False, eos_token_id=None, pad_token_id=0)
    prompts = random_prompts(W2_REQUESTS, W2_PROMPT, 2)
    model.generate_batch(inputs=prompts[:8], generation_config=gen)  # warm up
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=gen)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.generated_tokens) for o in outputs.values())
    results["peer_w2_output_tokens_per_s"] = tokens / elapsed
    results["peer_w2_tokens"] = tokens


def run_isolated(name: str, fn, results: dict) -> None:
    """Run one contender, record its error instead of dying, and give its memory back."""
    try:
        fn(results)
    except Exception as exc:
        results[f"{name}_error"] = repr(exc)[:300]
    gc.collect()
    torch.cuda.empty_cache()


def engine_runs(model_dir: Path, results: dict, batch_invariant: bool, async_scheduling: str = "auto"):
    """W1 (unless batch_invariant) and W2 on one engine; with async_scheduling="off", W1 alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fixtures.engine import make_engine, make_request, run_to_completion

    engine = make_engine(
        model_dir, device="cuda", load_format="random", max_model_len=2048, max_num_seqs=256,
        max_num_batched_tokens=8192, batch_invariant=batch_invariant, async_scheduling=async_scheduling,
    )  # fmt: skip

    def run(prompts: list[list[int]], new_tokens: int) -> None:
        tag = time.monotonic_ns()
        reqs = [make_request(f"{tag}-{i}", p, engine.limits, temperature=0.0, max_tokens=new_tokens,
                             ignore_eos=True) for i, p in enumerate(prompts)]  # fmt: skip
        out = run_to_completion(engine, reqs, max_steps=100_000)
        assert sum(len(s[0].token_ids) for s in out.values()) == len(prompts) * new_tokens

    if not batch_invariant:
        # Fresh prompts for every run: a prompt seen before would be served from the prefix cache.
        run(random_prompts(1, W1_PROMPT, 100), W1_NEW)  # warm up
        fresh = [random_prompts(1, W1_PROMPT, seed) for seed in (1, 3, 4)]
        times = [wall(lambda prompt=prompt: run(prompt, W1_NEW)) for prompt in fresh]
        sync = "_sync" if async_scheduling == "off" else ""
        results[f"engine_w1{sync}_tokens_per_s"] = W1_NEW / statistics.median(times)
        if sync:
            return
    w2 = random_prompts(W2_REQUESTS, W2_PROMPT, 2)
    run(random_prompts(W2_REQUESTS, W2_PROMPT, 200), 16)  # warm up on other prompts (no prefix-cache hits)
    tag = "bi_" if batch_invariant else ""
    results[f"engine_{tag}w2_output_tokens_per_s"] = W2_REQUESTS * W2_NEW / wall(lambda: run(w2, W2_NEW))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-batch-invariant", action="store_true")
    parser.add_argument("--only-peer-w1", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    results: dict = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d")}
    results.update(measure_ceilings())
    results.update(rooflines(results))
    if args.only_peer_w1:
        run_isolated("peer_w1", peer_w1, results)
        print(json.dumps(results, indent=2))
        return
    if not args.skip_peer:
        run_isolated("peer_w1", peer_w1, results)
        run_isolated("peer_w2", peer_w2, results)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config(Path(tmp) / "llama8b")
        sync_w1 = lambda r: engine_runs(model_dir, r, batch_invariant=False, async_scheduling="off")  # noqa: E731
        run_isolated("engine_sync", sync_w1, results)
        run_isolated("engine", lambda r: engine_runs(model_dir, r, batch_invariant=False), results)
        if not args.skip_batch_invariant:
            run_isolated("engine_bi", lambda r: engine_runs(model_dir, r, batch_invariant=True), results)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    table(results)


def table(r: dict) -> None:
    hbm, peak = r["hbm_bytes_per_s"] / 1e12, r["bf16_flop_per_s"] / 1e12
    print(f"\nHBM {hbm:.2f} TB/s, bf16 {peak:.0f} TFLOP/s ({r['device']}, {r['date']})")
    w2 = ("peer_w2_output_tokens_per_s", "w2_output_tokens_per_s")
    rows = [
        ("W1 tok/s", "engine_w1_tokens_per_s", "peer_w1_tokens_per_s", "w1_tokens_per_s"),
        ("W1, no run-ahead", "engine_w1_sync_tokens_per_s", "peer_w1_tokens_per_s", "w1_tokens_per_s"),
        ("W2 out tok/s", "engine_w2_output_tokens_per_s", *w2),
        ("W2 batch-invariant", "engine_bi_w2_output_tokens_per_s", *w2),
    ]
    print(f"{'workload':20} {'engine':>9} {'peer':>9} {'roofline':>9} {'vs roof':>8} {'vs peer':>8}")
    for name, ours, theirs, roof in rows:
        if ours not in r:
            continue
        peer_value = r.get(theirs, float("nan"))
        print(
            f"{name:20} {r[ours]:9.1f} {peer_value:9.1f} {r[roof]:9.1f} {r[ours] / r[roof]:8.1%} "
            f"{r[ours] / peer_value:7.2f}x"
        )


if __name__ == "__main__":
    main()
