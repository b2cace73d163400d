"""Batch-invariant matmul microbenchmark: matmul_batch_invariant vs F.linear (cuBLAS) on the
Llama-3-8B projection shapes, at the row counts a serving step sees (decode batches to prefill chunks).

Prints, per (shape, M): time, TFLOP/s, weight-read GB/s, and the Triton/cuBLAS time ratio; the
ceilings (bf16 matmul peak from an 8192³ product, HBM copy bandwidth) are measured in the same run.
--sweep also times a few tile configurations per shape (the table in matmul_tiles is keyed on N, K
and dtype only: pick the configuration with the best total over the row counts you care about).
Usage: python bench/matmul_microbench.py [--rows 1,64,256,2048,8192] [--sweep] [--shapes qkv,down]
                                         [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import triton

from epochserve.kernels.matmul_batch_invariant import MatmulTiles, matmul_batch_invariant, matmul_tiles

# (name, N, K, dtype, fp32_precision): the 8B model's per-layer projections and its fp32 lm_head.
SHAPES: list[tuple[str, int, int, torch.dtype, str]] = [
    ("qkv", 6144, 4096, torch.bfloat16, "ieee"),
    ("o_proj", 4096, 4096, torch.bfloat16, "ieee"),
    ("gate_up", 28672, 4096, torch.bfloat16, "ieee"),
    ("down", 4096, 14336, torch.bfloat16, "ieee"),
    ("lm_head fp32", 128256, 4096, torch.float32, "ieee"),
    ("lm_head fp32 tf32x3", 128256, 4096, torch.float32, "tf32x3"),
]
SWEEP = [
    MatmulTiles(128, 128, 64, 8, 8, 3),
    MatmulTiles(128, 64, 64, 8, 4, 4),
    MatmulTiles(64, 64, 64, 8, 4, 4),
    MatmulTiles(128, 256, 64, 8, 8, 3),
    MatmulTiles(64, 128, 64, 8, 4, 4),
    MatmulTiles(128, 128, 64, 8, 8, 4),
    MatmulTiles(128, 256, 64, 8, 8, 4),
    MatmulTiles(256, 128, 64, 8, 8, 3),
    MatmulTiles(128, 128, 64, 8, 4, 3),
    MatmulTiles(256, 128, 64, 8, 8, 4),
    MatmulTiles(128, 256, 64, 8, 8, 2),
    MatmulTiles(256, 64, 64, 8, 8, 4),
    MatmulTiles(128, 256, 64, 8, 8, 3, tma=True),
    MatmulTiles(128, 128, 64, 8, 8, 4, tma=True),
    MatmulTiles(256, 128, 64, 8, 8, 3, tma=True),
    MatmulTiles(128, 256, 64, 8, 8, 4, tma=True),
]


def median_ms(fn: Callable[[], object]) -> float:
    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def ceilings() -> dict[str, float]:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    flops = 2 * 8192**3 / (median_ms(lambda: a @ b) * 1e-3)
    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 2 / (median_ms(lambda: dst.copy_(src)) * 1e-3)
    return {"bf16_flops": flops, "copy_bytes_per_s": bandwidth}


def time_shape(name: str, n: int, k: int, dtype: torch.dtype, precision: str, rows: list[int], sweep: bool):
    weight = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    weight64 = weight.double()
    out: list[dict[str, Any]] = []
    for m in rows:
        x = torch.randn(m, k, device="cuda", dtype=dtype)

        def ours(tiles: MatmulTiles | None = None, x: torch.Tensor = x) -> torch.Tensor:
            return matmul_batch_invariant(x, weight, fp32_precision=precision, tiles=tiles)  # type: ignore[arg-type]

        checked = min(m, 16)  # fp64 reference on a few rows: correct before timed
        ref = F.linear(x[:checked].double(), weight64)
        err = float((ours()[:checked].double() - ref).norm() / ref.norm())
        row: dict[str, Any] = {"shape": name, "m": m, "rel_err": err}
        row["triton_ms"] = median_ms(ours)
        row["torch_ms"] = median_ms(lambda x=x: F.linear(x, weight))
        row["tflops"] = 2 * m * n * k / (row["triton_ms"] * 1e-3) / 1e12
        row["weight_gbs"] = n * k * weight.element_size() / (row["triton_ms"] * 1e-3) / 1e9
        if sweep:
            row["sweep_ms"] = {}
            for tiles in SWEEP:
                try:
                    row["sweep_ms"][str(tiles)] = median_ms(lambda t=tiles, run=ours: run(t))
                except Exception as exc:  # a variant may not fit in shared memory
                    row["sweep_ms"][str(tiles)] = f"{type(exc).__name__}"
        out.append(row)
    del weight64
    return out, str(matmul_tiles(n, k, dtype))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1,16,64,256,512,2048,8192")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--shapes", default="", help="comma-separated shape names (default: all)")
    parser.add_argument("--json")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")]
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    result.update(triton=triton.__version__, ceilings=ceilings(), shapes=[], tables={})
    wanted = set(args.shapes.split(",")) if args.shapes else {s[0] for s in SHAPES}
    for name, n, k, dtype, precision in (s for s in SHAPES if s[0] in wanted):
        timed, table = time_shape(name, n, k, dtype, precision, rows, args.sweep)
        result["shapes"].extend(timed)
        result["tables"][name] = table
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    c = result["ceilings"]
    print(f"\n{result['device']}  torch {result['torch']}  triton {result['triton']}")
    peak, bandwidth = c["bf16_flops"] / 1e12, c["copy_bytes_per_s"] / 1e12
    print(f"bf16 matmul peak {peak:.0f} TFLOP/s, copy bandwidth {bandwidth:.2f} TB/s")
    if any("sweep_ms" in r for r in result["shapes"]):
        for name in result["tables"]:
            rows = [r for r in result["shapes"] if r["shape"] == name]
            totals: dict[str, float] = {}
            for r in rows:
                for tiles, ms in r["sweep_ms"].items():
                    if isinstance(ms, float):
                        totals[tiles] = totals.get(tiles, 0.0) + ms / r["torch_ms"]
            best = min(totals, key=totals.__getitem__) if totals else "-"
            print(f"  {name}: table {result['tables'][name]}; best sweep (sum of time/cuBLAS) {best}")
    head = ("shape", "M", "triton ms", "cuBLAS ms", "ratio", "TFLOP/s", "W GB/s", "err")
    print("{:>20} {:>6} {:>10} {:>10} {:>6} {:>8} {:>7} {:>8}".format(*head))
    for r in result["shapes"]:
        ratio = r["triton_ms"] / r["torch_ms"]
        print(
            f"{r['shape']:>20} {r['m']:>6} {r['triton_ms']:>10.4f} {r['torch_ms']:>10.4f} {ratio:>6.2f} "
            f"{r['tflops']:>8.1f} {r['weight_gbs']:>7.0f} {r['rel_err']:>8.1e}"
        )


if __name__ == "__main__":
    main()
