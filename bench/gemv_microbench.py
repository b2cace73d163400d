"""Batch-1 projections: kernels/gemv_triton.py vs cuBLAS (F.linear) on the Llama-3-8B shapes.

Each timing cycles through copies of the weight totalling >= 256 MB, so every call reads HBM (one
shape alone fits the 50 MB L2, where a decode step's weights never sit). Prints per shape the time
and achieved bandwidth of both, against the copy bandwidth measured in the same run; --sweep ranks
tile configurations per shape (kernels/gemv_triton.py's table is keyed on N and K).
Usage: python bench/gemv_microbench.py [--sweep] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import cuda_time, measure_ceilings

from epochserve.kernels.gemv_triton import GemvTiles, gemv_tiles, gemv_triton

SHAPES = [("qkv", 6144, 4096), ("o_proj", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336),
          ("lm_head", 128256, 4096)]  # fmt: skip
CANDIDATES = [
    GemvTiles(block_n=n, block_k=k, split_k=s, num_warps=w)
    for n, k, s, w in itertools.product((8, 16, 32), (128, 256, 512), (1, 2, 4, 8), (4, 8))
    if n * k <= 8192
]


def time_per_call(fn_of_weight, weights: list[torch.Tensor]) -> float:
    def cycle() -> None:
        for w in weights:
            fn_of_weight(w)

    return cuda_time(cycle, repeats=7) / len(weights)


def time_shape(name: str, n: int, k: int, sweep: bool) -> dict:
    copies = max(2, -(-(256 << 20) // (n * k * 2)))
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    out_dtype = torch.float32 if name == "lm_head" else None  # the head: fp32 logits from a bf16 table
    ref = F.linear(x.double(), weights[0].double())
    got = gemv_triton(x, weights[0], out_dtype=out_dtype).double()
    assert ((got - ref).norm() / ref.norm()).item() < 1e-2, name

    def cublas(w: torch.Tensor) -> torch.Tensor:
        return torch.mm(x, w.t(), out_dtype=torch.float32) if out_dtype else F.linear(x, w)

    row = {"shape": name, "n": n, "k": k, "tiles": str(gemv_tiles(n, k)),
           "cublas_ms": time_per_call(cublas, weights) * 1e3,
           "triton_ms": time_per_call(lambda w: gemv_triton(x, w, out_dtype), weights) * 1e3}  # fmt: skip
    if sweep:
        timed = {
            str(t): time_per_call(lambda w, t=t: gemv_triton(x, w, out_dtype, t), weights) for t in CANDIDATES
        }
        best = min(timed, key=timed.__getitem__)
        row |= {"best_tiles": best, "best_ms": timed[best] * 1e3}
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    bandwidth = measure_ceilings()["hbm_bytes_per_s"]
    rows = []
    for name, n, k in SHAPES:
        rows.append(time_shape(name, n, k, args.sweep))
        torch.cuda.empty_cache()
    result = {"device": torch.cuda.get_device_name(), "hbm_bytes_per_s": bandwidth, "shapes": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s ({result['device']})")
    for r in rows:
        nbytes = r["n"] * r["k"] * 2

        def share(ms: float, nbytes: int = nbytes) -> str:
            return f"{ms:.3f} ms {nbytes / (ms / 1e3) / bandwidth:6.1%}"

        line = f"{r['shape']:8} cuBLAS {share(r['cublas_ms'])}  triton {share(r['triton_ms'])}"
        if "best_ms" in r:
            line += f"  best {share(r['best_ms'])} {r['best_tiles']}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
