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

An MoE router's product can also route (`add_rms_norm_route_triton`): the program that stores its
logits last (kernels/arrival.py) reads the whole fp32 row back and takes the top-k with
moe_topk_triton's `_route_row`: the top-k launch's experts without that launch, and its weights to
fp32 rounding (the softmax's sum reduces in this kernel's layout, 4 warps, not the top-k kernel's 1;
the interpreter, whose sums ignore layouts, gives the same bits).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from epochserve.kernels.arrival import arrival_counters, last_to_arrive
from epochserve.kernels.gemv_triton import MAX_ROWS, SHORT_ROW, GemvTiles, _load_weight_step
from epochserve.kernels.moe_topk_triton import _route_row, route_pads
from epochserve.kernels.pdl import pdl_enabled, pdl_prologue


@triton.jit
def _add_rms_norm_gemv_kernel(
    out_ptr,  # [M, N]
    summed_ptr,  # [M, K] out: x + residual (HAS_RESIDUAL)
    normed_ptr,  # [M, K] out: the normalized row (STORE_NORMED)
    x_ptr, residual_ptr,  # [M, K]
    norm_weight_ptr,  # [K]
    weight_ptr,  # [N, K]
    counter_ptr,  # ROUTE: one int32 counter at 0 (left at 0)
    topk_weights_ptr, topk_ids_ptr,  # ROUTE: [M, TOP_K] fp32 / int64 out
    M, N, K, eps, stride_xm, stride_rm, stride_wn, stride_om,
    HAS_RESIDUAL: tl.constexpr, STORE_NORMED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
    ROUTE: tl.constexpr, TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr,
    RENORMALIZE: tl.constexpr,
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
    # A constexpr branch of its own, so that without ROUTE no ticket is ever compiled in (there is
    # no counter then).
    if ROUTE:  # noqa: SIM102
        # out holds the fp32 router logits; the last program to store its share routes the rows
        if last_to_arrive(counter_ptr, tl.num_programs(0)):
            slots = tl.arange(0, K_PAD)
            for m in tl.static_range(BLOCK_M):
                chosen_w, chosen_id = _route_row(
                    out_ptr, m, N, stride_om, TOP_K=TOP_K, K_PAD=K_PAD, E_PAD=E_PAD, RENORMALIZE=RENORMALIZE
                )
                keep = (slots < TOP_K) & (tl.full([K_PAD], m, tl.int32) < M)
                tl.store(topk_weights_ptr + m * TOP_K + slots, chosen_w, mask=keep)
                tl.store(topk_ids_ptr + m * TOP_K + slots, chosen_id, mask=keep)


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
    x, residual = _checked(x, residual, norm_weight, weight)
    m, n = x.shape[0], weight.shape[0]
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    summed = torch.empty_like(x) if residual is not None else x
    normed = torch.empty_like(x) if store_normed else None
    _launch(out, summed, normed, x, residual, norm_weight, eps, weight, tiles, route=None)
    return out, summed, normed


def add_rms_norm_route_triton(
    x: torch.Tensor,  # [M, K], M <= MAX_ROWS
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,  # [K]
    eps: float,
    gate_weight: torch.Tensor,  # [experts, K], K <= SHORT_ROW: the MoE router
    top_k: int,
    renormalize: bool,
    *,
    tiles: GemvTiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """add_rms_norm_gemv_triton's router product (fp32 logits, normed row stored) with the router's
    choice folded in: (routing weights fp32, expert ids int64 [M, top_k] by descending weight — what
    topk_route_triton returns for the logits — x + residual, the normalized row). None while a CUDA
    graph is captured and no counter is free (kernels/arrival.py): the caller takes two launches."""
    x, residual = _checked(x, residual, norm_weight, gate_weight)
    m, experts = x.shape[0], gate_weight.shape[0]
    if not 0 < top_k <= experts:
        raise ValueError(f"top_k {top_k} is not in 1..{experts}")
    counters = arrival_counters(x.device, 1)
    if counters is None:
        return None
    logits = torch.empty((m, experts), dtype=torch.float32, device=x.device)
    summed = torch.empty_like(x) if residual is not None else x
    normed = torch.empty_like(x)
    weights = torch.empty((m, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((m, top_k), dtype=torch.int64, device=x.device)
    route = (counters, weights, ids, top_k, renormalize)
    _launch(logits, summed, normed, x, residual, norm_weight, eps, gate_weight, tiles, route)
    return weights, ids, summed, normed


def _checked(
    x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x and residual with contiguous rows, once the shapes and dtypes are checked."""
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
    return x, residual


def _launch(
    out: torch.Tensor,
    summed: torch.Tensor,
    normed: torch.Tensor | None,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    tiles: GemvTiles | None,
    route: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, bool] | None,
) -> None:
    (m, k), n = x.shape, weight.shape[0]
    if not m:
        return
    t = tiles or norm_gemv_tiles(n, k)
    counter, topk_weights, topk_ids, top_k, renormalize = route or (out, out, out, 1, False)
    k_pad, e_pad = route_pads(top_k, n) if route else (2, 16)
    pdl = pdl_enabled(x.device)
    _add_rms_norm_gemv_kernel[(triton.cdiv(n, t.block_n),)](
        out, summed, normed if normed is not None else out, x, residual if residual is not None else x,
        norm_weight, weight, counter, topk_weights, topk_ids, m, n, k, eps, x.stride(0),
        residual.stride(0) if residual is not None else 0, weight.stride(0), out.stride(0),
        HAS_RESIDUAL=residual is not None, STORE_NORMED=normed is not None,
        BLOCK_M=triton.next_power_of_2(m), BLOCK_N=t.block_n, BLOCK_K=triton.next_power_of_2(k), PDL=pdl,
        ROUTE=route is not None, TOP_K=top_k, K_PAD=k_pad, E_PAD=e_pad, RENORMALIZE=renormalize,
        num_warps=t.num_warps, num_stages=t.num_stages, launch_pdl=pdl,
    )  # fmt: skip
