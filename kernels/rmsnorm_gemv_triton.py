"""Residual add + RMSNorm folded into the projection that follows it, for a few rows (references:
add_rms_norm_torch / rms_norm_torch, then F.linear).

Why: a batch-1 decode step of a pre-norm model runs two norms a layer, each a launch of its own
(~2 us of a ~4 us gap between two projections at batch 1: a 48-layer model spends ~0.2 ms a token
on them, bench/profile_moe_w1.py). The projection after a norm reads the norm's whole output row
anyway; when that row is short (the hidden size, up to gemv_triton's SHORT_ROW), every program
normalizes it itself, from the residual stream, and the norm's launch is gone. Program 0 also stores
the new residual stream (x + residual) and, if asked, the normalized row (an MoE block's experts
read it after its router product).

Rounding is the unfused path's: the sum rounded to the input dtype, normalized in fp32, rounded,
scaled by the norm weight and rounded to the input dtype again, then multiplied in fp32 as
gemv_triton does. The one difference is the order of the variance's sum (this kernel's layout, not
the norm kernel's), so the normalized row agrees with rmsnorm_triton's to rounding, not to the bit.
The whole row is one K step: no split-K, and a row's result does not depend on the other rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from epochserve.kernels.gemv_triton import MAX_ROWS, SHORT_ROW, GemvTiles, _load_weight_step
from epochserve.kernels.pdl import pdl_enabled, pdl_prologue


@triton.jit
def _add_rms_norm_gemv_kernel(
    out_ptr,  # [M, N]
    summed_ptr,  # [M, K] out: x + residual (HAS_RESIDUAL)
    normed_ptr,  # [M, K] out: the normalized row (STORE_NORMED)
    x_ptr, residual_ptr,  # [M, K]
    norm_weight_ptr,  # [K]
    weight_ptr,  # [N, K]
    M, N, K, eps, stride_xm, stride_rm, stride_wn, stride_om,
    HAS_RESIDUAL: tl.constexpr, STORE_NORMED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < K
    # Weights first: no kernel of a step writes them (pdl.py), so they load while the last one ends.
    w = _load_weight_step(weight_ptr, cols, ks, col_ok, K, stride_wn)
    gamma = tl.load(norm_weight_ptr + ks, mask=k_ok, other=0.0).to(tl.float32)
    pdl_prologue(PDL)
    w = w.to(tl.float32)
    first = (tl.zeros([BLOCK_K], dtype=tl.int32) + tl.program_id(0)) == 0  # program 0 stores rows
    rows = tl.arange(0, BLOCK_M)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for m in tl.static_range(BLOCK_M):
        row_ok = k_ok & (tl.full([BLOCK_K], m, tl.int32) < M)
        x = tl.load(x_ptr + m * stride_xm + ks, mask=row_ok, other=0.0)
        if HAS_RESIDUAL:
            residual = tl.load(residual_ptr + m * stride_rm + ks, mask=row_ok, other=0.0)
            x = (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)  # rounded as `x + residual`
            tl.store(summed_ptr + m * K + ks, x, mask=row_ok & first)
        x32 = x.to(tl.float32)
        variance = tl.sum(x32 * x32, axis=0) / K
        # Hugging Face order: normalize in fp32, round to the input dtype, scale by the weight.
        normed = (x32 * tl.math.rsqrt(variance + eps)).to(x.dtype)
        normed = (gamma * normed.to(tl.float32)).to(x.dtype)
        if STORE_NORMED:
            tl.store(normed_ptr + m * K + ks, normed, mask=row_ok & first)
        part = tl.sum(w * normed.to(tl.float32)[None, :], axis=1)
        acc = tl.where(rows[:, None] == m, acc + part[None, :], acc)
    out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & col_ok[None, :])


def norm_gemv_tiles(n: int, k: int) -> GemvTiles:
    """Output features per program and warps (the K step is always the whole row): gemv_tiles'
    short-row choice until measured otherwise (bench/decode_kernels_microbench.py)."""
    return GemvTiles(block_n=2, block_k=triton.next_power_of_2(k), num_warps=4, num_stages=1)


def takes_norm_gemv(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether add_rms_norm_gemv_triton takes these: a few rows whose width is a short row."""
    return x.dim() == 2 and x.shape[0] <= MAX_ROWS and weight.dim() == 2 and weight.shape[1] <= SHORT_ROW


def add_rms_norm_gemv_triton(
    x: torch.Tensor,  # [M, K], M <= MAX_ROWS
    residual: torch.Tensor | None,  # [M, K] or None (x is the residual stream itself)
    norm_weight: torch.Tensor,  # [K]
    eps: float,
    weight: torch.Tensor,  # [N, K], K <= SHORT_ROW
    *,
    out_dtype: torch.dtype | None = None,
    store_normed: bool = False,
    tiles: GemvTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(norm(x + residual) @ weight.T, x + residual, norm(x + residual) if store_normed); without a
    residual the second is x itself. out_dtype torch.float32 stores the product's sums unrounded.
    tiles: for benchmarks (default: norm_gemv_tiles; block_k is ignored, the K step is the row)."""
    if not takes_norm_gemv(x, weight) or x.shape[1] != weight.shape[1] or norm_weight.shape != (x.shape[1],):
        raise ValueError(
            f"expected x [M <= {MAX_ROWS}, K], weight [N, K <= {SHORT_ROW}], norm weight [K]; got "
            f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(norm_weight.shape)}"
        )
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} is not x's {tuple(x.shape)}")
    if x.dtype != weight.dtype or norm_weight.dtype != x.dtype:
        raise ValueError(
            f"x, norm weight and weight differ in dtype: {x.dtype}, {norm_weight.dtype}, {weight.dtype}"
        )
    if weight.stride(-1) != 1:
        raise ValueError("the weight needs a contiguous last dimension")
    x = x if x.stride(-1) == 1 else x.contiguous()
    if residual is not None and residual.stride(-1) != 1:
        residual = residual.contiguous()
    (m, k), n = x.shape, weight.shape[0]
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    summed = torch.empty_like(x) if residual is not None else x
    normed = torch.empty_like(x) if store_normed else None
    t = tiles or norm_gemv_tiles(n, k)
    if m:
        pdl = pdl_enabled(x.device)
        _add_rms_norm_gemv_kernel[(triton.cdiv(n, t.block_n),)](
            out, summed, normed if normed is not None else out, x, residual if residual is not None else x,
            norm_weight, weight, m, n, k, eps, x.stride(0),
            residual.stride(0) if residual is not None else 0, weight.stride(0), out.stride(0),
            HAS_RESIDUAL=residual is not None, STORE_NORMED=store_normed,
            BLOCK_M=triton.next_power_of_2(m), BLOCK_N=t.block_n, BLOCK_K=triton.next_power_of_2(k), PDL=pdl,
            num_warps=t.num_warps, num_stages=t.num_stages, launch_pdl=pdl,
        )  # fmt: skip
    return out, summed, normed
