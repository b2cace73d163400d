"""Where one W1 decode step's GPU time goes: kernels of the batch-1 decode graph, by name.

Builds the 8B engine (random bf16 weights), prefills one 128-token prompt, then
  1. times replays of the batch-1 decode graph with CUDA events (GPU time per token, no host), and
  2. profiles replays with torch.profiler and sums kernel time per kernel name,
  3. profiles the same number of whole engine steps (graph, input copies, sampler, host), W1's loop:
     what a token costs beyond the graph, by kernel name, and the GPU's idle time between steps.
The difference between a replay's time and its kernels' sum is the gaps between kernels.
python bench/decode_profile.py [--replays 50]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_common import LLAMA31_8B, cuda_time, measure_ceilings, weight_bytes, write_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replays", type=int, default=50)
    return parser


def main(argv: list[str] | None = None) -> None:
    from fixtures.engine import make_engine, make_request

    args = build_parser().parse_args(argv)
    ceilings = measure_ceilings()
    roofline_ms = weight_bytes(LLAMA31_8B) / ceilings["hbm_bytes_per_s"] * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(write_config(Path(tmp) / "m"), device="cuda", load_format="random",
                             max_model_len=2048, max_num_seqs=256, max_num_batched_tokens=8192)  # fmt: skip
        prompt = torch.randint(1000, 100000, (128,), generator=torch.Generator().manual_seed(0)).tolist()
        engine.add_request(make_request("p", prompt, engine.limits, temperature=0.0,
                                        max_tokens=args.replays + 16, ignore_eos=True))  # fmt: skip
        for _ in range(8):  # prefill, then decode steps through the batch-1 graph
            engine.step()
        graphs = engine.runner.graphs
        assert graphs is not None
        graph = graphs.graphs[1]
        replay_ms = cuda_time(graph.replay, repeats=args.replays, warmup=5) * 1e3
        in_graph = profile(lambda: [graph.replay() for _ in range(args.replays)], args.replays)
        total = sum(v[0] for v in in_graph.values())
        print(f"\nHBM {ceilings['hbm_bytes_per_s'] / 1e12:.2f} TB/s; W1 roofline {roofline_ms:.3f} ms/token")
        print(f"batch-1 decode graph replay: {replay_ms:.3f} ms ({roofline_ms / replay_ms:.1%} of roofline)")
        print(f"kernels sum {total:.3f} ms, gaps {replay_ms - total:.3f} ms, "
              f"{sum(v[1] for v in in_graph.values()):.0f} kernels per replay")  # fmt: skip
        for name, (ms, count) in sorted(in_graph.items(), key=lambda kv: -kv[1][0])[:25]:
            print(f"{ms:8.4f} ms  {count:5.0f}x  {name}")
        steps = args.replays
        torch.cuda.synchronize()
        start = time.perf_counter()
        whole = profile(lambda: [engine.step() for _ in range(steps)], steps)
        step_ms = (time.perf_counter() - start) * 1e3 / steps  # profiled: a little slower than W1
        busy = sum(v[0] for v in whole.values())
        print(f"\nengine step (W1 loop, profiled): {step_ms:.3f} ms; GPU busy {busy:.3f} ms, "
              f"idle {step_ms - busy:.3f} ms a step; beyond the graph's kernels:")  # fmt: skip
        extra = {n: (ms - in_graph.get(n, [0.0, 0])[0], c - in_graph.get(n, [0.0, 0])[1])
                 for n, (ms, c) in whole.items()}  # fmt: skip
        for name, (ms, count) in sorted(extra.items(), key=lambda kv: -kv[1][0])[:15]:
            print(f"{ms:8.4f} ms  {count:5.1f}x  {name}")
        while engine.has_work():
            engine.step()
        for seed in (1, 2):
            gen = torch.Generator().manual_seed(seed)
            fresh = torch.randint(1000, 100000, (128,), generator=gen).tolist()
            w1_timeline(engine, make_request(f"w1-{seed}", fresh, engine.limits, temperature=0.0,
                                             max_tokens=256, ignore_eos=True), roofline_ms)  # fmt: skip
        fresh = torch.randint(1000, 100000, (128,), generator=torch.Generator().manual_seed(3)).tolist()
        prefill_profile(engine, make_request("w1-3", fresh, engine.limits, temperature=0.0, max_tokens=256,
                                             ignore_eos=True))  # fmt: skip


def prefill_profile(engine, request) -> None:
    """The host's work up to a W1 request's first token (the prefill runs eagerly), by function."""
    import cProfile
    import pstats

    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    engine.add_request(request)
    walls = []
    while not engine.step():
        walls.append((time.perf_counter() - start) * 1e3)
    profiler.disable()
    walls.append((time.perf_counter() - start) * 1e3)
    print(f"\nsteps to the first token under cProfile, ms since add_request: {[round(w, 2) for w in walls]}")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(28)
    while engine.has_work():
        engine.step()


def w1_timeline(engine, request, roofline_ms: float) -> None:
    """One W1 request, unprofiled: when each token reached the host. Splits W1's time per token
    into the steady decode interval and the fixed cost of the prefill and the last steps."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.add_request(request)
    stamps = []
    while engine.has_work():
        stamps.extend(time.perf_counter() for _ in engine.step())
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    total, median = stamps[-1] - start, gaps[len(gaps) // 2]
    print(f"\nW1 request: {len(stamps)} tokens in {total * 1e3:.1f} ms = {len(stamps) / total:.1f} tok/s "
          f"({roofline_ms * len(stamps) / (total * 1e3):.1%} of roofline); first token "
          f"{(stamps[0] - start) * 1e3:.2f} ms; then median {median * 1e3:.3f} ms a token (p10 "
          f"{gaps[len(gaps) // 10] * 1e3:.3f}, p90 {gaps[9 * len(gaps) // 10] * 1e3:.3f}); sum beyond "
          f"the median {(total - len(stamps) * median) * 1e3:.1f} ms")  # fmt: skip


def profile(fn, repeats: int) -> dict[str, list[float]]:
    """GPU time (ms) and count per kernel name, per repeat, of what fn queues."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    per_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = per_name[event.name[:90]]
            entry[0] += event.device_time / 1e3 / repeats
            entry[1] += 1 / repeats
    return per_name


if __name__ == "__main__":
    main()
