"""The decode step's fused kernels against the launches they replace, timed inside CUDA graphs
(as the engine runs them), 8B shapes, bf16.

  down projection: silu_and_mul_triton + cuBLAS (F.linear)  vs  silu_and_mul_gemv_triton (tiles swept)
  attention input: apply_rotary_qk_triton + write_kv_cache_triton  vs  rotary_store_kv_triton

Each graph runs the op 32 times over 4 weight copies (470 MB: nothing stays in L2); the time per
op is the graph's replay time / 32 (median of replays). Bandwidth counts the weight bytes once.
python bench/decode_kernels_microbench.py
"""

from __future__ import annotations

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
TILES = [
    (16, 512, 4, 3),
    (16, 512, 8, 3),
    (32, 256, 4, 4),
    (32, 512, 8, 3),
    (16, 1024, 8, 2),
    (64, 256, 8, 3),
]


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


def down_projection(bytes_per_us: float) -> None:
    from epochserve.kernels.activation_triton import silu_and_mul_triton
    from epochserve.kernels.silu_mul_gemv_triton import silu_and_mul_gemv_triton

    weights = [torch.randn(HIDDEN, INTERMEDIATE, device="cuda", dtype=torch.bfloat16) / 120 for _ in range(4)]
    weight_bytes = weights[0].numel() * 2
    print(f"\ndown projection ({HIDDEN}x{INTERMEDIATE} bf16, {weight_bytes / 1e6:.0f} MB), us per call")
    print(f"{'rows':>4} {'silu+cuBLAS':>12} " + " ".join(f"{t!s:>18}" for t in TILES))
    for rows in (1, 2, 4):
        gate_up = torch.randn(rows, 2 * INTERMEDIATE, device="cuda", dtype=torch.bfloat16) * 3
        base = graph_us(lambda i, g=gate_up: F.linear(silu_and_mul_triton(g), weights[i % 4]))
        cells = []
        for block_n, block_k, warps, stages in TILES:

            def fused(
                i: int, g: torch.Tensor = gate_up, t: tuple = (block_n, block_k, warps, stages)
            ) -> object:
                return silu_and_mul_gemv_triton(
                    g, weights[i % 4], block_n=t[0], block_k=t[1], num_warps=t[2], num_stages=t[3]
                )

            us = graph_us(fused)
            cells.append(f"{us:7.1f} ({weight_bytes / us / bytes_per_us:4.0%} BW)")
        print(
            f"{rows:>4} {base:7.1f} ({weight_bytes / base / bytes_per_us:3.0%}) "
            + " ".join(f"{c:>18}" for c in cells)
        )


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


def main() -> None:
    ceilings = measure_ceilings()
    bandwidth = ceilings["hbm_bytes_per_s"] / 1e12  # TB/s, copy (read + write)
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth:.2f} TB/s")
    down_projection(bandwidth * 1e6)  # bytes per us
    attention_input()


if __name__ == "__main__":
    main()
