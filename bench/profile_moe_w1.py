"""Where a W1 decode step (batch 1) of the Qwen3-30B-A3B shape spends its time, on CUDA.

Runs W1's request (128 prompt ids, greedy) on one engine with random bf16 weights, then profiles
`--steps` decode steps with torch.profiler and prints the kernels by device time per step, beside
the step's wall time: device time close to the wall means the kernels set the pace; far below it,
launches and gaps do. `--eager` turns the decode graphs off, to see each op's launches.

    python bench/profile_moe_w1.py [--steps 16] [--eager] [--rows 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from gpu_common import write_config  # noqa: E402
from moe_w1_w5 import QWEN3_30B_A3B, W1_PROMPT  # noqa: E402
from w5_rollout import Workload, random_prompts  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=16, help="decode steps profiled")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--rows", type=int, default=30, help="kernels listed")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from fixtures.engine import make_engine, make_request

    from epochserve.proto.convert import OutputMode

    config = QWEN3_30B_A3B
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config(Path(tmp) / "model", config)
        engine = make_engine(model_dir, device="cuda", load_format="random", max_model_len=1024,
                             max_num_seqs=8, cuda_graphs=not args.eager)  # fmt: skip
        prompt = random_prompts(Workload(1, 1, 8, 1.0, W1_PROMPT), config["vocab_size"], 1)[0]
        request = make_request("w1", prompt, engine.limits, max_tokens=8 + 3 * args.steps, temperature=0.0,
                               ignore_eos=True, output_mode=OutputMode.FINAL)  # fmt: skip
        engine.add_request(request)
        for _ in range(8 + args.steps):  # prefill, warm-up and timed decode steps
            engine.step()
        walls = []
        for _ in range(args.steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            engine.step()
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - start)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                engine.step()
            torch.cuda.synchronize()
        engine.close()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events) / args.steps
    mode = "eager" if args.eager else "graphs"
    wall_ms = statistics.median(walls) * 1e3
    print(f"\nW1 decode step ({mode}, {torch.cuda.get_device_name()}): wall {wall_ms:.2f} ms (median), "
          f"kernels {total / 1e3:.2f} ms per step")  # fmt: skip
    print(f"{'kernel':80s} {'us/step':>9s} {'calls/step':>10s}")
    for e in events[: args.rows]:
        print(f"{e.key[:80]:80s} {e.device_time_total / args.steps:9.1f} {e.count / args.steps:10.1f}")


if __name__ == "__main__":
    main()
