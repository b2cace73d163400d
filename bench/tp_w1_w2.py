"""W1 and W2 (docs/design.md §8, 8B Llama-3.1 shape, random bf16 weights) at TP=1 and TP=N on one host.

TP ranks are real processes (TPLauncher: one per GPU, NCCL all-reduce), as `epochctl worker --tp N`
runs them. Also measures one NCCL all-reduce of a 4096-wide bf16 row (the per-layer cost TP adds).
    python bench/tp_w1_w2.py --tp 2 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_common import measure_ceilings, wall, write_config
from w1_w2 import W1_NEW, W1_PROMPT, W2_NEW, W2_PROMPT, W2_REQUESTS, random_prompts, rooflines


def run_workloads(engine, results: dict, tag: str) -> None:
    from fixtures.engine import make_request, run_to_completion

    def run(prompts: list[list[int]], new_tokens: int) -> None:
        stamp = time.monotonic_ns()
        reqs = [make_request(f"{stamp}-{i}", p, engine.limits, temperature=0.0, max_tokens=new_tokens,
                             ignore_eos=True) for i, p in enumerate(prompts)]  # fmt: skip
        out = run_to_completion(engine, reqs, max_steps=100_000)
        assert sum(len(s[0].token_ids) for s in out.values()) == len(prompts) * new_tokens

    # Fresh prompts for every run: a prompt seen before would be served from the prefix cache.
    run(random_prompts(1, W1_PROMPT, 100), W1_NEW)  # warm up
    results[f"{tag}_w1_tokens_per_s"] = W1_NEW / statistics.median(
        wall(lambda seed=seed: run(random_prompts(1, W1_PROMPT, seed), W1_NEW)) for seed in (1, 3, 4)
    )
    w2 = random_prompts(W2_REQUESTS, W2_PROMPT, 2)
    run(random_prompts(16, W2_PROMPT, 200), 16)
    results[f"{tag}_w2_output_tokens_per_s"] = W2_REQUESTS * W2_NEW / wall(lambda: run(w2, W2_NEW))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    from epochserve.worker.config import EngineConfig
    from epochserve.worker.engine.engine import Engine
    from epochserve.worker.tp.launcher import TPLauncher

    args = build_parser().parse_args(argv)
    results: dict = {"device": f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}",
                     "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    results.update(measure_ceilings())
    results.update(rooflines(results))
    with tempfile.TemporaryDirectory() as tmp:
        config = EngineConfig(model_dir=write_config(Path(tmp) / "m"), device="cuda", load_format="random",
                              max_model_len=2048, max_num_seqs=256, max_num_batched_tokens=8192)  # fmt: skip
        engine = Engine(config)
        run_workloads(engine, results, "tp1")
        del engine
        torch.cuda.empty_cache()
        launcher = TPLauncher(replace(config), args.tp, timeout_seconds=300)
        rank0_config, tp, channel = launcher.start()
        engine = Engine(rank0_config, tp, channel)
        run_workloads(engine, results, f"tp{args.tp}")
        engine.close()
        launcher.stop()
    results["w1_speedup"] = results[f"tp{args.tp}_w1_tokens_per_s"] / results["tp1_w1_tokens_per_s"]
    results["w2_speedup"] = (
        results[f"tp{args.tp}_w2_output_tokens_per_s"] / results["tp1_w2_output_tokens_per_s"]
    )
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(
        f"\n{results['device']} {results['date']}  HBM {results['hbm_bytes_per_s'] / 1e12:.2f} TB/s per GPU"
    )
    for w in ("w1_tokens_per_s", "w2_output_tokens_per_s"):
        one, many = results[f"tp1_{w}"], results[f"tp{args.tp}_{w}"]
        print(f"{w:24} TP=1 {one:9.1f}  TP={args.tp} {many:9.1f}  speedup {many / one:.2f}x")


if __name__ == "__main__":
    main()
