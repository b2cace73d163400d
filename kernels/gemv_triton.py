"""y = x Wᵀ for one row of x (a batch-1 decode step), in Triton: every weight byte read once, at
memory speed, with a fixed summation order.

A decode step of one sequence is a chain of matrix-vector products whose cost is reading the
weights. Each program reads a [BLOCK_N, BLOCK_K] tile of W per iteration over its share of K and
keeps fp32 partial sums per (row, k-lane); shapes with few output rows also split K over SPLIT_K
programs so that every SM has weight to stream. The SPLIT_K partial rows are then summed in a fixed
order (no atomics): results are deterministic and depend on (N, K) and the table below only.
Reference: F.linear on the upcast operands (tests/kernels/test_gemv_triton.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True, slots=True)
class GemvTiles:
    block_n: int
    block_k: int
    split_k: int
    num_warps: int


def gemv_tiles(n: int, k: int) -> GemvTiles:
    """The configuration for a weight [n, k] (bench/gemv_microbench.py --sweep ranks candidates)."""
    if n >= 16384:
        return GemvTiles(block_n=16, block_k=256, split_k=1, num_warps=4)
    if k >= 8192:
        return GemvTiles(block_n=16, block_k=256, split_k=4, num_warps=4)
    return GemvTiles(block_n=16, block_k=256, split_k=2, num_warps=4)


@triton.jit
def _gemv_partials_kernel(
    x_ptr,  # [K]
    w_ptr,  # [N, K], last dim contiguous
    partials_ptr,  # [SPLIT_K, N] fp32
    N,
    K,
    stride_wn,
    k_per_split,  # a multiple of BLOCK_K
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    tile_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    w_rows = w_ptr + rows.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < k_end
        x = tl.load(x_ptr + ks, mask=k_mask, other=0.0).to(tl.float32)
        w = tl.load(w_rows + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc += w.to(tl.float32) * x[None, :]
    tl.store(partials_ptr + split * N + rows, tl.sum(acc, axis=1), mask=row_mask)


def gemv_triton(
    x: torch.Tensor,  # [1, K]
    weight: torch.Tensor,  # [N, K]
    out_dtype: torch.dtype | None = None,
    tiles: GemvTiles | None = None,
) -> torch.Tensor:
    """x @ weight.T → [1, N] in out_dtype (default x's dtype); fp32 accumulation, one rounding."""
    if x.dim() != 2 or x.shape[0] != 1 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        shapes = f"{tuple(x.shape)} and {tuple(weight.shape)}"
        raise ValueError(f"gemv takes x [1, K] and weight [N, K], got {shapes}")
    if weight.stride(-1) != 1:
        raise ValueError("weight needs a contiguous last dimension")
    n, k = weight.shape
    t = tiles or gemv_tiles(n, k)
    k_per_split = triton.cdiv(triton.cdiv(k, t.split_k), t.block_k) * t.block_k
    splits = triton.cdiv(k, k_per_split)
    partials = torch.empty((splits, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, t.block_n), splits)
    _gemv_partials_kernel[grid](
        x.contiguous(), weight, partials, n, k, weight.stride(0), k_per_split,
        BLOCK_N=t.block_n, BLOCK_K=t.block_k, num_warps=t.num_warps,
    )  # fmt: skip
    summed = partials[0:1] if splits == 1 else partials.sum(dim=0, keepdim=True)
    return summed.to(out_dtype or x.dtype)
