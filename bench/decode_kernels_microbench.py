"""The batch-1 decode step's kernels against their alternatives, timed inside CUDA graphs (as the
engine runs them), 8B shapes (or --model qwen3-30b-a3b: its dense projections only), bf16.

  projections: cuBLAS (down: silu_and_mul_triton + cuBLAS)  vs  gemv_triton (tiles swept)
  attention input: apply_rotary_qk_triton + write_kv_cache_triton  vs  rotary_store_kv_triton
  decode attention: partition lengths of the split schedule, short contexts under a 2048 bound
  add + RMSNorm + projection: add_rms_norm_triton + gemv_triton  vs  add_rms_norm_gemv_triton

Each graph runs the op 32 times (projections: over 4 weight copies, so nothing stays in L2); the
time per op is the graph's replay time / 32 (median of replays). Bandwidth counts weight bytes once.
python bench/decode_kernels_microbench.py [--model llama-8b|qwen3-30b-a3b]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import measure_ceilings

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 4096, 14336, 32, 8, 128
REPS = 32
# (BLOCK_N, BLOCK_K, num_warps, num_stages) of gemv_triton; gemv_tiles' long-row default first, its
# short-row one (rows up to 4096) is (2, 2048, 4, 2).
TILES = [(16, 1024, 8, 2), (16, 2048, 8, 1), (8, 2048, 8, 2), (16, 1024, 16, 2), (32, 1024, 8, 2),
         (16, 512, 8, 3), (8, 1024, 4, 3), (4, 2048, 4, 2), (2, 2048, 4, 2), (4, 1024, 4, 2)]  # fmt: skip
# name → (N, K) of the 8B model's projections at batch 1.
SHAPES = {"qkv": (6144, 4096), "o_proj": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
# Qwen3-30B-A3B's dense projections (the experts: bench/moe_microbench.py); the router's product
# stores fp32. Few output features: the tiles add narrow programs so the grid covers every SM.
QWEN3_30B_SHAPES = {"qkv": (5120, 2048), "o_proj": (2048, 4096), "router": (128, 2048)}
QWEN3_30B_TILES = [*TILES[:2], (16, 512, 8, 3), (8, 1024, 4, 2), (4, 1024, 4, 2), (4, 2048, 4, 2),
                   (2, 2048, 4, 2), (4, 512, 4, 3), (2, 1024, 2, 3), (1, 2048, 2, 2),
                   (1, 1024, 1, 3)]  # fmt: skip


def graph_us(op: Callable[[int], object], replays: int = 30) -> float:
    """Microseconds per op call, from replays of a graph holding REPS calls (op(i): the i-th)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            op(i)  # warm up: compile and autotune outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(REPS):
            op(i)
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / REPS)
    return statistics.median(times)


def projections(bytes_per_us: float, shapes: dict[str, tuple[int, int]], tiles: list[tuple]) -> None:
    """Each projection at 1 row: cuBLAS (the down projection: SiLU-and-mul + cuBLAS) vs gemv_triton
    (the router's: fp32 out, as the engine stores it)."""
    from epochserve.kernels.activation_triton import silu_and_mul_triton
    from epochserve.kernels.gemv_triton import GemvTiles, gemv_triton

    print("\nprojections at 1 row, us per call (fraction of copy bandwidth); the Triton columns are tiles")
    print(f"{'':8} {'cuBLAS':>12} " + " ".join(f"{t!s:>17}" for t in tiles))
    for name, (n, k) in shapes.items():
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(4)]
        fused, out_dtype = name == "down", torch.float32 if name == "router" else None
        x = torch.randn(1, 2 * k if fused else k, device="cuda", dtype=torch.bfloat16) * 3
        nbytes = n * k * 2

        def cublas(i: int, x: torch.Tensor = x, fused: bool = fused, weights: list = weights,
                   od: object = out_dtype) -> object:  # fmt: skip
            out = F.linear(silu_and_mul_triton(x) if fused else x, weights[i % 4])
            return out.float() if od else out

        def cell(us: float, nbytes: int = nbytes) -> str:
            return f"{us:6.1f} ({nbytes / us / bytes_per_us:4.0%})"

        cells = []
        for block_n, block_k, warps, stages in tiles:

            def triton_gemv(
                i: int,
                x: torch.Tensor = x,
                fused: bool = fused,
                weights: list = weights,
                t: tuple = (block_n, block_k, warps, stages),
                od: object = out_dtype,
            ) -> object:
                g = GemvTiles(*t)
                return gemv_triton(x, weights[i % 4], silu_and_mul=fused, tiles=g, out_dtype=od)

            cells.append(cell(graph_us(triton_gemv)))
        print(f"{name:8} {cell(graph_us(cublas)):>12} " + " ".join(f"{c:>17}" for c in cells))
        del weights


# (BLOCK_N, num_warps) of add_rms_norm_gemv_triton (its K step is the whole row).
NORM_GEMV_TILES = [(2, 4), (4, 4), (8, 4), (16, 8), (2, 2), (4, 8)]


def norm_then_projection(bytes_per_us: float, shapes: dict[str, tuple[int, int]]) -> None:
    """Residual add + RMSNorm then a projection at 1 row: two launches (add_rms_norm_triton, then
    gemv_triton at its tiles) vs add_rms_norm_gemv_triton (tiles swept). The router's product stores
    fp32 and the normalized row, as the MoE block needs."""
    from epochserve.kernels.gemv_triton import GemvTiles

    print("\nadd + RMSNorm + projection at 1 row, us per call (fraction of copy bandwidth); fused columns:")
    print(f"{'':8} {'two launches':>14} " + " ".join(f"{t!s:>14}" for t in NORM_GEMV_TILES))
    for name, (n, k) in shapes.items():
        if name not in ("qkv", "router"):
            continue
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5 for _ in range(4)]
        x, residual = (torch.randn(1, k, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        norm_weight = torch.rand(k, device="cuda", dtype=torch.bfloat16)
        router = name == "router"
        out_dtype, nbytes = torch.float32 if router else None, n * k * 2

        def cell(us: float, nbytes: int = nbytes) -> str:
            return f"{us:5.1f} ({nbytes / us / bytes_per_us:4.0%})"

        args = dict(x=x, residual=residual, norm_weight=norm_weight, weights=weights, out_dtype=out_dtype)
        cells = [
            cell(graph_us(functools.partial(_fused_norm_gemv, **args, store_normed=router, tiles=t)))
            for t in (GemvTiles(block_n, 0, warps, 1) for block_n, warps in NORM_GEMV_TILES)
        ]
        two = cell(graph_us(functools.partial(_norm_then_gemv, **args)))
        print(f"{name:8} {two:>14} " + " ".join(f"{c:>14}" for c in cells))
        del weights


def _norm_then_gemv(
    i: int,
    x: torch.Tensor,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    weights: list,
    out_dtype: object,
) -> object:
    from epochserve.kernels.gemv_triton import gemv_triton
    from epochserve.kernels.rmsnorm_triton import add_rms_norm_triton

    normed, _ = add_rms_norm_triton(x, residual, norm_weight, 1e-6)
    return gemv_triton(normed, weights[i % 4], out_dtype=out_dtype)


def _fused_norm_gemv(
    i: int, x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, weights: list,
    out_dtype: object, store_normed: bool, tiles: object,
) -> object:  # fmt: skip
    from epochserve.kernels.rmsnorm_gemv_triton import add_rms_norm_gemv_triton

    return add_rms_norm_gemv_triton(
        x,
        residual,
        norm_weight,
        1e-6,
        weights[i % 4],
        out_dtype=out_dtype,
        store_normed=store_normed,
        tiles=tiles,
    )


def decode_attention() -> None:
    """Batch-1 decode attention as a graph captured for a 2048-position bound runs it, by partition
    length (the split schedule: partitions + a reduce kernel; 2048: one partition, no reduce)."""
    from epochserve.kernels.paged_attention_triton import paged_attention_triton

    bound, block = 2048, 16
    kv_cache = [torch.randn(bound // block, block, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
                for _ in range(2)]  # fmt: skip
    table = torch.arange(bound // block, device="cuda", dtype=torch.int32)[None, :]
    query = torch.randn(1, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    starts = torch.tensor([0, 1], device="cuda", dtype=torch.int32)
    splits = (512, 256, 128, 64, 2048)
    print("\ndecode attention, batch 1, graph bound 2048, us per call by partition length " + str(splits))
    for context in (136, 260, 384, 1000):
        lens = torch.tensor([context], device="cuda", dtype=torch.int32)

        def attend(i: int, split: int, lens: torch.Tensor = lens) -> object:
            return paged_attention_triton(
                query, kv_cache[0], kv_cache[1], table, lens, starts, HEAD_DIM**-0.5,
                max_query_len=1, max_seq_len=bound, fixed_split_tokens=split,
            )  # fmt: skip

        times = [graph_us(lambda i, s=split: attend(i, s)) for split in splits]
        print(f"context {context:5d}: " + "  ".join(f"{t:6.2f}" for t in times))


def attention_input() -> None:
    from epochserve.kernels.rotary import rope_cos_sin_cache, rope_inv_freq

    cos_sin = rope_cos_sin_cache(rope_inv_freq(HEAD_DIM, 500000.0, "llama3", 8.0), 8192).cuda()
    caches = [
        torch.zeros(4096, 16, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2)
    ]
    print("\nRoPE + KV-cache write, us per call")
    for tokens in (1, 4, 64, 256):
        separate, fused = attention_input_ops(tokens, cos_sin, caches)
        print(f"{tokens:>4} tokens: two kernels {graph_us(separate):6.2f}   fused {graph_us(fused):6.2f}")


def attention_input_ops(
    tokens: int, cos_sin: torch.Tensor, caches: list[torch.Tensor]
) -> tuple[Callable[[int], object], Callable[[int], object]]:
    from epochserve.kernels.kv_cache_triton import write_kv_cache_triton
    from epochserve.kernels.rotary_kv_cache_triton import rotary_store_kv_triton
    from epochserve.kernels.rotary_triton import apply_rotary_qk_triton

    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    widths = [HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM]
    q, k, v = (t.view(tokens, -1, HEAD_DIM) for t in qkv.split(widths, -1))
    positions = torch.randint(0, 8192, (tokens,), device="cuda")
    slots = torch.randperm(4096 * 16, device="cuda")[:tokens]

    def separate(i: int) -> object:
        rq, rk = apply_rotary_qk_triton(q, k, positions, cos_sin)
        write_kv_cache_triton(rk, v, caches[0], caches[1], slots)
        return rq

    def fused(i: int) -> object:
        return rotary_store_kv_triton(q, k, v, positions, cos_sin, caches[0], caches[1], slots)

    return separate, fused


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama-8b", choices=["llama-8b", "qwen3-30b-a3b"])
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    ceilings = measure_ceilings()
    bandwidth = ceilings["hbm_bytes_per_s"] / 1e12  # TB/s, copy (read + write)
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth:.2f} TB/s")
    if args.model == "qwen3-30b-a3b":
        projections(bandwidth * 1e6, QWEN3_30B_SHAPES, QWEN3_30B_TILES)
        norm_then_projection(bandwidth * 1e6, QWEN3_30B_SHAPES)
        return
    projections(bandwidth * 1e6, SHAPES, TILES)  # bytes per us
    norm_then_projection(bandwidth * 1e6, SHAPES)
    attention_input()
    decode_attention()


if __name__ == "__main__":
    main()
