"""Batch-invariant matmul in Triton: y = x Wᵀ + b where row i of y depends only on row i of x.

Every output tile accumulates over the whole K dimension in one program, in increasing K order,
BLOCK_K at a time, with launch parameters taken from a fixed table — no split-K, no autotuning —
so the float operations that produce y[i, j] are the same for any number of rows (M = 1 or 8192).
For 16-bit operands the table has two tile shapes, one for decode-sized M and one for prefill-sized
M: both walk K in the same 64-wide steps of the same tensor-core instruction, which sums each
element in the same order whatever the tile's M and N extent, so a row gets the same bits from
either (tests/gpu checks rows computed under each against each other, in bytes). The reference is
F.linear (fp64 in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import triton
import triton.language as tl

from epochserve.kernels import device_info


@dataclass(frozen=True, slots=True)
class MatmulTiles:
    block_m: int
    block_n: int
    block_k: int
    group_m: int  # output tiles walked in groups of group_m row-tiles: the weight tile stays in L2
    num_warps: int
    num_stages: int
    tma: bool = False  # persistent programs fed by TMA (16-bit, Hopper and later): _matmul_tma_kernel


# From this many rows, 16-bit products use the prefill tiles (bench/matmul_microbench.py --sweep, H100).
PREFILL_MIN_ROWS = 1024


def matmul_tiles(n: int, k: int, dtype: torch.dtype, m: int = 1) -> MatmulTiles:
    """The configuration for a weight of shape [n, k] at m rows (see the module docstring).

    bf16/fp16 decode (m < PREFILL_MIN_ROWS): 128-row tiles for the tensor cores; narrow (64-column)
    tiles for N < 8192 so that a step of a few hundred rows still spreads over ≥ 2 programs per SM.
    Prefill: persistent 128 x 256 tiles loaded by TMA (the pointer-load kernel's best prefill tiles
    ran at ~540 TFLOP/s on an H200 where cuBLAS reaches ~700). All use BLOCK_K = 64.
    fp32 (an fp32 lm_head table): CUDA-core FMA tiles, one shape for every m.
    """
    if dtype == torch.float32:
        return MatmulTiles(block_m=64, block_n=64, block_k=32, group_m=8, num_warps=4, num_stages=3)
    if m >= PREFILL_MIN_ROWS:
        return MatmulTiles(
            block_m=128, block_n=256, block_k=64, group_m=8, num_warps=8, num_stages=3, tma=True
        )
    if n < 8192:
        return MatmulTiles(block_m=128, block_n=64, block_k=64, group_m=8, num_warps=4, num_stages=4)
    return MatmulTiles(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=8, num_stages=3)


@triton.jit(do_not_specialize=["M"])
def _matmul_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K]
    bias_ptr,  # [N]
    out_ptr,  # [M, N]
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row-tiles run next to each other over the same weight columns.
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % per_group) % group_rows
    tile_n = (pid % per_group) // group_rows

    rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_xm + ks[None, :]
    w_ptrs = w_ptr + cols.to(tl.int64)[None, :] * stride_wn + ks[:, None]
    row_mask = rows[:, None] < M
    col_mask = cols[None, :] < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs, mask=row_mask, other=0.0)
            w = tl.load(w_ptrs, mask=col_mask, other=0.0)
        else:
            k_left = K - k0
            x = tl.load(x_ptrs, mask=row_mask & (ks[None, :] < k_left), other=0.0)
            w = tl.load(w_ptrs, mask=col_mask & (ks[:, None] < k_left), other=0.0)
        acc = tl.dot(x, w, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask & col_mask)


@triton.jit(do_not_specialize=["M"])
def _matmul_tma_kernel(
    x_desc,  # [M, K] tensor descriptor, blocks [BLOCK_M, BLOCK_K]
    w_desc,  # [N, K], blocks [BLOCK_N, BLOCK_K]
    out_desc,  # [M, N], blocks [BLOCK_M, BLOCK_N]
    bias_ptr,  # [N]
    M,
    N,
    K,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    NUM_PROGRAMS: tl.constexpr,
):
    """_matmul_kernel's tiles, K order and arithmetic, with the operands copied into shared memory
    by the TMA engine (no address math per element, out-of-range elements read as 0) and one program
    per SM walking output tiles (no launch tail). Same tl.dot per 64-wide K step: same bits."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS):
        first_m = (tile // per_group) * GROUP_M
        group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
        tile_m = first_m + (tile % per_group) % group_rows
        tile_n = (tile % per_group) // group_rows
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            x = x_desc.load([tile_m * BLOCK_M, k0])
            w = w_desc.load([tile_n * BLOCK_N, k0])
            acc = tl.dot(x, w.T, acc)
        if HAS_BIAS:
            cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        out_desc.store([tile_m * BLOCK_M, tile_n * BLOCK_N], acc.to(out_desc.dtype))


def _tma_ready(*tensors: torch.Tensor) -> bool:
    """TMA needs Hopper or later, 16-byte aligned bases and row strides."""
    if not device_info.has_tma(tensors[0].device):
        return False
    return all(t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0 for t in tensors)


def _launch_tma(x, weight, bias, out, t: MatmulTiles) -> None:
    from triton.tools.tensor_descriptor import TensorDescriptor

    (m, k), n = x.shape, weight.shape[0]
    tiles = triton.cdiv(m, t.block_m) * triton.cdiv(n, t.block_n)
    programs = min(tiles, device_info.num_sms(x.device))
    _matmul_tma_kernel[(programs,)](
        TensorDescriptor.from_tensor(x, [t.block_m, t.block_k]),
        TensorDescriptor.from_tensor(weight, [t.block_n, t.block_k]),
        TensorDescriptor.from_tensor(out, [t.block_m, t.block_n]),
        bias if bias is not None else weight, m, n, k,
        HAS_BIAS=bias is not None, BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k,
        GROUP_M=t.group_m, NUM_PROGRAMS=programs, num_warps=t.num_warps, num_stages=t.num_stages,
    )  # fmt: skip


def matmul_batch_invariant(
    x: torch.Tensor,  # [M, K]
    weight: torch.Tensor,  # [N, K]
    bias: torch.Tensor | None = None,  # [N]
    *,
    fp32_precision: Literal["ieee", "tf32x3"] = "ieee",
    tiles: MatmulTiles | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """x @ weight.T (+ bias) → [M, N] in out_dtype (default x's dtype), fp32 accumulation; row i
    depends on x[i] only.

    The bias is added to the fp32 accumulator before the single rounding to the output dtype
    (none for out_dtype=float32: 16-bit inputs then give exact products summed in fp32).
    fp32_precision (fp32 inputs only): "ieee" multiplies on CUDA cores; "tf32x3" splits each operand
    into a tf32 head and tail on the tensor cores (≈ fp32 accuracy, several times faster on H100).
    tiles: override the table (benchmarks).
    """
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"cannot multiply x {tuple(x.shape)} by weight.T of {tuple(weight.shape)}")
    if x.dtype != weight.dtype:
        raise ValueError(f"x is {x.dtype} but weight is {weight.dtype}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    if weight.stride(-1) != 1:
        raise ValueError("weight needs a contiguous last dimension")
    (m, k), n = x.shape, weight.shape[0]
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    if m == 0 or n == 0:
        return out
    t = tiles or matmul_tiles(n, k, weight.dtype, m)
    # The TMA kernel stores 16-bit tiles (an fp32 output tile would not fit in shared memory beside
    # the operands); otherwise the pointer-load kernel runs the same tiles, with the same bits.
    if t.tma and out.element_size() == 2 and _tma_ready(x, weight, out):
        _launch_tma(x, weight, bias, out, t)
        return out
    grid = (triton.cdiv(m, t.block_m) * triton.cdiv(n, t.block_n),)
    _matmul_kernel[grid](
        x, weight, bias if bias is not None else weight, out, m, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % t.block_k == 0,
        BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, GROUP_M=t.group_m,
        DOT_PRECISION=fp32_precision if x.dtype == torch.float32 else "tf32",
        num_warps=t.num_warps, num_stages=t.num_stages,
    )  # fmt: skip
    return out
