"""Matrix-vector products for a few rows (decode steps of small batches), optionally with the MLP's
SiLU-and-mul in the prologue (references: F.linear, and silu_and_mul_linear_torch in
kernels/activation.py).

Why: a decode step of a few sequences reads each projection's whole weight for a handful of rows:
a memory-bound product, where what counts is keeping enough loads in flight and, per launch, the
fixed cost (a batch-1 step launches ~300 kernels). `silu_and_mul_gemv_triton` computes silu(gate)
* up while loading the down projection's weight: one launch instead of two, no activation round
trip. The activation is rounded to the input dtype exactly where silu_and_mul_triton rounds it;
products accumulate in fp32 (CUDA-core FMAs: a few rows give the tensor cores nothing to do) and
the result is rounded once, as a matmul's is.

Each program owns BLOCK_N output features of every row and walks K in BLOCK_K steps, summing each
step's products in a fixed tree: no split-K, nothing is summed across programs, and a row's result
does not depend on the other rows. Tiles: gemv_tiles (bench/decode_kernels_microbench.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from epochserve.kernels.activation_triton import _silu_and_mul
from epochserve.kernels.pdl import pdl_enabled, pdl_prologue

# Rows one launch takes (the kernel's unrolled row loop); the engine uses it for fewer (ops.py).
MAX_ROWS = 4


@triton.jit
def _gemv_kernel(
    out_ptr,  # [M, N]
    x_ptr,  # [M, K], or [M, 2 * K] (gate first) with SILU_AND_MUL
    weight_ptr,  # [N, K]
    M, N, K, stride_xm, stride_wn, stride_om,
    SILU_AND_MUL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    col_ok = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    start = 0
    if PDL:
        # The weight is never written by the kernel just before (pdl.py), so its first K step is
        # loaded while that kernel finishes; only x waits.
        ks = tl.arange(0, BLOCK_K)
        w = _load_weight_step(weight_ptr, cols, ks, col_ok, K, stride_wn)
        pdl_prologue(PDL)
        acc = _gemv_step(acc, w, x_ptr, ks, M, K, stride_xm, SILU_AND_MUL, BLOCK_M, BLOCK_K)
        start = BLOCK_K
    for k0 in range(start, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        w = _load_weight_step(weight_ptr, cols, ks, col_ok, K, stride_wn)
        acc = _gemv_step(acc, w, x_ptr, ks, M, K, stride_xm, SILU_AND_MUL, BLOCK_M, BLOCK_K)
    out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & col_ok[None, :])


@triton.jit
def _load_weight_step(weight_ptr, cols, ks, col_ok, K, stride_wn):
    return tl.load(
        weight_ptr + cols[:, None] * stride_wn + ks[None, :],
        mask=col_ok[:, None] & (ks < K)[None, :],
        other=0.0,
    )


@triton.jit
def _gemv_step(
    acc, w, x_ptr, ks, M, K, stride_xm,
    SILU_AND_MUL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """acc [BLOCK_M, BLOCK_N] plus every row's products with one K step of the weight, w [BLOCK_N,
    BLOCK_K] (masked lanes zero)."""
    rows = tl.arange(0, BLOCK_M)
    k_ok = ks < K
    w = w.to(tl.float32)
    for m in tl.static_range(BLOCK_M):
        x_mask = k_ok & (tl.full([BLOCK_K], m, tl.int32) < M)  # padded rows (M=3 → 4) load zeros
        x = tl.load(x_ptr + m * stride_xm + ks, mask=x_mask, other=0.0)
        if SILU_AND_MUL:
            up = tl.load(x_ptr + m * stride_xm + K + ks, mask=x_mask, other=0.0)
            x = _silu_and_mul(x, up)  # rounded exactly as silu_and_mul_triton rounds it
        part = tl.sum(w * x.to(tl.float32)[None, :], axis=1)  # [BLOCK_N]: this K step of row m
        acc = tl.where(rows[:, None] == m, acc + part[None, :], acc)
    return acc


@dataclass(frozen=True, slots=True)
class GemvTiles:
    block_n: int  # output features per program
    block_k: int  # K step
    num_warps: int
    num_stages: int


# Rows up to this long take narrow programs of one or two K steps: such products are bound by each
# program's ramp-up and the grid's tail more than by bandwidth, and narrow programs put every SM to
# work at once (bench/decode_kernels_microbench.py, H100 2026-12-06, docs/benchmarks.md).
SHORT_ROW = 4096


def gemv_tiles(n: int, k: int) -> GemvTiles:
    """Tiles for an [n, k] weight at one row. Short rows: 2 output features and K steps of up to 2048,
    4 warps (Qwen3-30B-A3B qkv 9.7 -> 8.7 us, o_proj 9.5 -> 7.5, router 2.9 -> 1.7; Llama-3.1-8B qkv
    23.1 -> 18.2, o_proj 13.5 -> 13.0). Long rows (the 8B's down, K 14336, at 97% of bandwidth): 16
    output features and 1024-wide K steps, 8 warps; wider in N than in K, shorter, deeper-pipelined
    K steps (512 x 3 stages)."""
    if k <= SHORT_ROW:
        return GemvTiles(block_n=2, block_k=min(2048, triton.next_power_of_2(k)), num_warps=4, num_stages=2)
    if n > k:
        return GemvTiles(block_n=16, block_k=512, num_warps=8, num_stages=3)
    return GemvTiles(block_n=16, block_k=1024, num_warps=8, num_stages=2)


def gemv_triton(
    x: torch.Tensor,  # [M, K], M <= MAX_ROWS
    weight: torch.Tensor,  # [N, K]
    *,
    silu_and_mul: bool = False,
    tiles: GemvTiles | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """x @ weight.T for a few rows, [M, N] in x's dtype (or out_dtype: torch.float32 stores the fp32
    sums unrounded); with silu_and_mul, x is [M, 2K] (gate first) and the product is of silu(gate)
    * up. tiles: for benchmarks (default: gemv_tiles)."""
    width = 2 * weight.shape[1] if silu_and_mul else weight.shape[1]
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != width:
        raise ValueError(f"expected [M, {width}] and [N, K], got {tuple(x.shape)}, {tuple(weight.shape)}")
    if x.shape[0] > MAX_ROWS:
        raise ValueError(f"at most {MAX_ROWS} rows, got {x.shape[0]}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x is {x.dtype} but the weight is {weight.dtype}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if weight.stride(-1) != 1:
        raise ValueError("the weight needs a contiguous last dimension")
    (m, _), (n, k) = x.shape, weight.shape
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    t = tiles or gemv_tiles(n, k)
    if m:
        pdl = pdl_enabled(x.device)
        _gemv_kernel[(triton.cdiv(n, t.block_n),)](
            out, x, weight, m, n, k, x.stride(0), weight.stride(0), out.stride(0),
            SILU_AND_MUL=silu_and_mul, BLOCK_M=triton.next_power_of_2(m), BLOCK_N=t.block_n,
            BLOCK_K=t.block_k, PDL=pdl, num_warps=t.num_warps, num_stages=t.num_stages, launch_pdl=pdl,
        )  # fmt: skip
    return out


def silu_and_mul_gemv_triton(
    gate_up: torch.Tensor, weight: torch.Tensor, tiles: GemvTiles | None = None
) -> torch.Tensor:
    """(silu(gate) * up) @ weight.T for a few rows: the MLP's down projection in one launch."""
    return gemv_triton(gate_up, weight, silu_and_mul=True, tiles=tiles)
