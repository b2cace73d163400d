"""W1 (latency) and W5 (the RL rollout) of docs/design.md §8 on the Qwen3-30B-A3B shape with random bf16
weights, against mixture-of-experts rooflines measured in the same run, transformers as W1's peer.

Rooflines (bf16 bytes; the HBM copy bandwidth and bf16 matmul peak measured first, gpu_common):
  a decode step of B sequences must read the dense weights (attention, norms, routers, lm_head), each
  MoE layer's experts its tokens route to, and every running sequence's KV. Distinct experts per layer:
  exactly top_k at B = 1; E·(1 - (1 - k/E)^B) in expectation under uniform routing above (random
  weights route close to uniformly; from B ≈ 64 on it is all 128, the whole model).
  W1  one request, 128 prompt ids, 256 new tokens greedy: 256 / the sum of its steps' least times.
  W5  as bench/w5_rollout.py: every prompt's prefill at the matmul peak (2 FLOPs per active parameter
      per prompt token; the lm_head once per prompt), then the decode steps the max_num_seqs waves force.
W5 here: 40 prompts x n 8 (320 sequences), 256 random prompt ids, 512 new tokens, ignore_eos,
temperature 1, top_p 1.0 and 0.95; max_num_seqs 160 (on an 80 GB card the KV pool beside 61 GB of
weights holds ~170 such sequences). Paths: the engine in-process, then one worker behind a router
(`link`, FINAL) at top_p 1.0. Peer (W1): transformers' Qwen3MoeForCausalLM `generate`, greedy,
its default cache and experts implementation (no compile: its expert dispatch is data-dependent).

    python bench/moe_w1_w5.py [--skip-peer] [--skip-link] [--json OUT]
    python bench/moe_w1_w5.py --tiny      # CPU: a tiny Qwen3-MoE shape, small counts (checks the script)
Prints a table last. Not pass/fail: docs/benchmarks.md.
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

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from gpu_common import kv_bytes_per_token, measure_ceilings, wall, write_config  # noqa: E402
from w5_rollout import Workload, random_prompts, run_cluster  # noqa: E402

QWEN3_30B_A3B = {
    "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "vocab_size": 151936,
    "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
    "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
    "num_experts_per_tok": 8, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "tie_word_embeddings": False, "attention_bias": False, "hidden_act": "silu",
    "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16",
}  # fmt: skip
QWEN3_MOE_TINY = {
    **QWEN3_30B_A3B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
    "moe_intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2, "torch_dtype": "float32",
    "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
W1_PROMPT, W1_NEW = 128, 256
BF16 = 2


def layer_dense_params(c: dict) -> int:
    """One layer's parameters outside the experts: attention, q/k norms, two RMSNorms, the router."""
    h, d = c["hidden_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    return h * (q + 2 * kv) + q * h + 2 * d + 2 * h + c["num_experts"] * h


def expert_params(c: dict) -> int:
    return 3 * c["hidden_size"] * c["moe_intermediate_size"]


def experts_touched(c: dict, batch: int) -> float:
    e, k = c["num_experts"], c["num_experts_per_tok"]
    return e * (1 - (1 - k / e) ** batch)  # k exactly at batch 1


def step_bytes(c: dict, batch: int, context_tokens: int) -> float:
    """Least bytes a decode step of `batch` sequences over `context_tokens` cached tokens reads."""
    layers = c["num_hidden_layers"] * (layer_dense_params(c) + experts_touched(c, batch) * expert_params(c))
    lm_head = c["vocab_size"] * c["hidden_size"]
    return BF16 * (layers + lm_head) + context_tokens * kv_bytes_per_token(c)


def active_params(c: dict) -> int:
    """Parameters one prompt token runs through (the lm_head aside: it runs once per prompt)."""
    return c["num_hidden_layers"] * (layer_dense_params(c) + c["num_experts_per_tok"] * expert_params(c))


def w1_roofline(c: dict, bw: float) -> float:
    seconds = sum(step_bytes(c, 1, W1_PROMPT + t) for t in range(W1_NEW)) / bw
    return W1_NEW / seconds


def w5_roofline(c: dict, w: Workload, max_num_seqs: int, ceilings: dict[str, float]) -> float:
    lm_head_flops = 2 * c["vocab_size"] * c["hidden_size"] * w.prompts
    prefill_flops = 2 * active_params(c) * w.prompts * w.prompt_len + lm_head_flops
    decode = 0.0
    for start in range(0, w.sequences, max_num_seqs):
        running = min(max_num_seqs, w.sequences - start)
        decode += sum(step_bytes(c, running, running * (w.prompt_len + t)) for t in range(w.max_tokens))
    seconds = prefill_flops / ceilings["bf16_flop_per_s"] + decode / ceilings["hbm_bytes_per_s"]
    return w.output_tokens / seconds


def engine_runs(model_dir: Path, overrides: dict, workloads: list[Workload], w1_new: int, vocab: int) -> dict:
    """W1 (three fresh prompts, the median) and each W5 workload on one engine."""
    from fixtures.engine import make_engine, make_request, run_to_completion

    from epochserve.proto.convert import OutputMode

    engine = make_engine(model_dir, **overrides)
    out: dict = {}

    def run(prompts: list[list[int]], n: int, max_tokens: int, **sampling) -> int:
        tag = time.monotonic_ns()
        reqs = [make_request(f"{tag}-{i}", p, engine.limits, n=n, seed=i, max_tokens=max_tokens,
                             ignore_eos=True, output_mode=OutputMode.FINAL, **sampling)
                for i, p in enumerate(prompts)]  # fmt: skip
        results = run_to_completion(engine, reqs, max_steps=10_000_000)
        tokens = sum(len(s.token_ids) for samples in results.values() for s in samples.values())
        assert tokens == len(prompts) * n * max_tokens, tokens
        return tokens

    # Fresh prompts every run: a prompt seen before would come from the prefix cache.
    w1 = Workload(1, 1, w1_new, 1.0, W1_PROMPT)
    run(random_prompts(w1, vocab, 900), 1, w1_new, temperature=0.0)  # warm up, capture
    fresh = [random_prompts(w1, vocab, seed) for seed in (1, 2, 3)]
    times = [wall(lambda p=p: run(p, 1, w1_new, temperature=0.0)) for p in fresh]
    out["engine_w1_tokens_per_s"] = w1_new / statistics.median(times)
    print(f"W1 engine: {out['engine_w1_tokens_per_s']:.1f} tok/s", flush=True)
    for k, w in enumerate(workloads):
        warm = random_prompts(w, vocab, 100 + k)[: max(1, w.prompts // 8)]
        run(warm, w.n, 16, temperature=1.0, top_p=w.top_p)
        prompts = random_prompts(w, vocab, 1 + k)
        seconds = wall(lambda p=prompts, w=w: run(p, w.n, w.max_tokens, temperature=1.0, top_p=w.top_p))
        out[f"engine_w5_{w.top_p}"] = w.output_tokens / seconds
        print(f"W5 top_p {w.top_p} engine: {out[f'engine_w5_{w.top_p}']:.0f} tok/s", flush=True)
    engine.close()
    return out


def peer_w1(config: dict, new_tokens: int, device: str) -> float:
    """transformers' generate on the same shape and random weights, greedy, batch 1."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype).eval()
    w = Workload(1, 1, new_tokens, 1.0, W1_PROMPT)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    model.generate(torch.tensor(random_prompts(w, config["vocab_size"], 900), device=device), **kwargs)
    times = []
    for seed in (1, 2, 3):
        prompt = torch.tensor(random_prompts(w, config["vocab_size"], seed), device=device)
        times.append(wall(lambda prompt=prompt: model.generate(prompt, **kwargs)))
    return new_tokens / statistics.median(times)


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="CPU, a tiny Qwen3-MoE, small counts")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-link", action="store_true")
    parser.add_argument("--w1-only", action="store_true", help="no W5 (nor its link path)")
    parser.add_argument("--max-num-seqs", type=int, default=160)
    parser.add_argument("--prompts", type=int, default=40, help="W5 prompts (n 8 each)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--large-gemv-tiles", action="store_true",
        help="the long-row gemv tiles for every projection (the engine before 52996ef)",
    )  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.large_gemv_tiles:
        from epochserve.kernels import gemv_triton

        gemv_triton.SHORT_ROW = 0
    device = "cpu" if args.tiny else "cuda"
    config = QWEN3_MOE_TINY if args.tiny else QWEN3_30B_A3B
    prompts, n, new, w1_new, peer_new = (4, 2, 8, 8, 8) if args.tiny else (args.prompts, 8, 512, W1_NEW, 64)
    max_num_seqs = min(args.max_num_seqs, 8) if args.tiny else args.max_num_seqs
    workloads = [Workload(prompts, n, new, top_p, 16 if args.tiny else 256) for top_p in (1.0, 0.95)]
    if args.w1_only:
        workloads, args.skip_link = [], True
    r: dict = {"shape": "tiny" if args.tiny else "qwen3-30b-a3b", "date": time.strftime("%Y-%m-%d"),
               "max_num_seqs": max_num_seqs}  # fmt: skip
    if device == "cuda":
        r["device"] = torch.cuda.get_device_name()
        r.update(measure_ceilings())
        free_memory(device)
        r["w1_roofline"] = w1_roofline(config, r["hbm_bytes_per_s"])
        for w in workloads:
            r[f"w5_roofline_{w.top_p}"] = w5_roofline(config, w, max_num_seqs, r)
    overrides = dict(device=device, load_format="random", max_model_len=W1_PROMPT + W1_NEW + 512 + 64,
                     max_num_seqs=max_num_seqs, max_num_batched_tokens=8192)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config(Path(tmp) / "model", config)
        r.update(engine_runs(model_dir, overrides, workloads, w1_new, config["vocab_size"]))
        free_memory(device)
        if not args.skip_link:
            rates = run_cluster(model_dir, Path(tmp) / "cluster", overrides, workloads[:1],
                                config["vocab_size"], ["link"])  # fmt: skip
            r["link_w5_1.0"] = rates["link"][0]
            free_memory(device)
    if not args.skip_peer:
        try:
            r["peer_w1_tokens_per_s"] = peer_w1(config, peer_new, device)
        except Exception as exc:  # the peer failing must not lose the engine's numbers
            r["peer_w1_error"] = repr(exc)[:300]
        free_memory(device)
    print(json.dumps(r, indent=2))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    table(r)


def table(r: dict) -> None:
    if "hbm_bytes_per_s" in r:
        hbm, peak = r["hbm_bytes_per_s"] / 1e12, r["bf16_flop_per_s"] / 1e12
        print(f"\n{r['shape']}: HBM {hbm:.2f} TB/s, bf16 {peak:.0f} TFLOP/s ({r['device']}, {r['date']})")
    print(f"{'workload':22} {'tok/s':>9} {'roofline':>9} {'vs roof':>8} {'peer':>9} {'vs peer':>8}")
    rows = [("W1", "engine_w1_tokens_per_s", "w1_roofline", "peer_w1_tokens_per_s")]
    for top_p in ("1.0", "0.95"):
        rows.append((f"W5 top_p {top_p} engine", f"engine_w5_{top_p}", f"w5_roofline_{top_p}", ""))
    rows.append(("W5 top_p 1.0 link", "link_w5_1.0", "w5_roofline_1.0", ""))
    for name, ours, roof, peer in rows:
        if ours not in r:
            continue
        roof_v, peer_v = r.get(roof, float("nan")), r.get(peer, float("nan"))
        v = r[ours]
        print(f"{name:22} {v:9.1f} {roof_v:9.1f} {v / roof_v:8.1%} {peer_v:9.1f} {v / peer_v:7.2f}x")


if __name__ == "__main__":
    main()
