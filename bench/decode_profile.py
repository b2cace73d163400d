"""Where one W1 decode step's GPU time goes: kernels of the batch-1 decode graph, by name.

Builds the 8B engine (random bf16 weights), prefills one 128-token prompt, then
  1. times replays of the batch-1 decode graph with CUDA events (GPU time per token, no host), and
  2. profiles replays with torch.profiler and sums kernel time per kernel name.
The difference between the replay time and the kernels' sum is the gaps between kernels.
python bench/decode_profile.py [--replays 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_common import LLAMA31_8B, cuda_time, measure_ceilings, weight_bytes, write_config


def main() -> None:
    from fixtures.engine import make_engine, make_request

    parser = argparse.ArgumentParser()
    parser.add_argument("--replays", type=int, default=50)
    args = parser.parse_args()
    ceilings = measure_ceilings()
    roofline_ms = weight_bytes(LLAMA31_8B) / ceilings["hbm_bytes_per_s"] * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(write_config(Path(tmp) / "m"), device="cuda", load_format="random",
                             max_model_len=2048, max_num_seqs=256, max_num_batched_tokens=8192)  # fmt: skip
        prompt = torch.randint(1000, 100000, (128,), generator=torch.Generator().manual_seed(0)).tolist()
        engine.add_request(make_request("p", prompt, engine.limits, temperature=0.0, max_tokens=64,
                                        ignore_eos=True))  # fmt: skip
        for _ in range(8):  # prefill, then decode steps through the batch-1 graph
            engine.step()
        graphs = engine.runner.graphs
        assert graphs is not None
        graph = graphs.graphs[1]
        replay_ms = cuda_time(graph.replay, repeats=args.replays, warmup=5) * 1e3
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(args.replays):
                graph.replay()
            torch.cuda.synchronize()
        per_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                entry = per_name[event.name[:90]]
                entry[0] += event.device_time / 1e3 / args.replays  # ms per replay
                entry[1] += 1 / args.replays
        total = sum(v[0] for v in per_name.values())
        print(f"\nHBM {ceilings['hbm_bytes_per_s'] / 1e12:.2f} TB/s; W1 roofline {roofline_ms:.3f} ms/token")
        print(f"batch-1 decode graph replay: {replay_ms:.3f} ms ({roofline_ms / replay_ms:.1%} of roofline)")
        print(f"kernels sum {total:.3f} ms, gaps {replay_ms - total:.3f} ms, "
              f"{sum(v[1] for v in per_name.values()):.0f} kernels per replay")  # fmt: skip
        for name, (ms, count) in sorted(per_name.items(), key=lambda kv: -kv[1][0])[:25]:
            print(f"{ms:8.4f} ms  {count:5.0f}x  {name}")


if __name__ == "__main__":
    main()
