"""Mixture-of-experts for a few tokens (decode at batch 1-4) as matrix-vector products, in Triton.

Same contract and rounding as fused_moe_triton (reference: fused_moe_torch in kernels/fused_moe.py),
for calls of at most MAX_TOKENS tokens outside batch_invariant mode (worker/layers/ops.py). Why: at
batch 1, fused_moe_triton spends three of its six launches grouping 8 pairs by expert and pads each
expert's one row to a 16-row tile; the decode step is bound by reading the 8 experts' weights and
by launches. Here a token's k experts are distinct, so nothing needs grouping: each (token, slot)
pair is its own matrix-vector product, and no weight is read twice at batch 1 (rarely at 2-4).

Three launches, none waiting for the host:
1. `_pair_gemv_kernel` GATED (grid: pairs x width tiles): the pair's x row times its expert's gate
   and up rows → SiLU-and-mul, rounded where the reference rounds → act [pairs, width]. The first
   tile's program also stores the pair's local expert (-1: another rank's; its rows stay unwritten).
2. `_pair_gemv_kernel` (grid: pairs x hidden tiles): act's row times the expert's down rows.
3. fused_moe_triton's `_combine_kernel`: each token's k rows weighted and summed in fp32 in ascending
   local expert id (the reference's order), rounded once.

Each program sums its K steps in a fixed order (CUDA-core FMAs: one row gives the tensor cores
nothing to do) as gemv_triton does. A token's bits depend on how many tokens share the call only
through which path runs (this one, or fused_moe_triton above MAX_TOKENS), which is why
batch_invariant mode never takes it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from epochserve.kernels.activation_triton import _silu_and_mul
from epochserve.kernels.fused_moe_triton import _combine_kernel
from epochserve.kernels.gemv_triton import GemvTiles

MAX_TOKENS = 4  # above, fused_moe_triton's grouped products read each touched expert once
# Per-kernel tiles (output rows per program, K step, warps, pipeline stages), fixed for every batch:
# bench/moe_microbench.py --gemv-sweep, Qwen3-30B-A3B layer at batch 1 (docs/benchmarks.md).
# H100, 2026-12-06: 35.0 us a layer call (72% of the copy bandwidth; the grouped path 47.0 us).
GATE_UP_TILES = GemvTiles(block_n=16, block_k=1024, num_warps=4, num_stages=3)
DOWN_TILES = GemvTiles(block_n=16, block_k=256, num_warps=8, num_stages=3)


@triton.jit
def _pair_gemv_kernel(
    out_ptr,  # [pairs, N]
    a_ptr,  # GATED: x [tokens, K]; else act [pairs, K]
    w_ptr,  # [experts, N (2N with GATED: gate rows, then up rows), K]
    ids_ptr,  # [pairs] global expert ids
    expert_map_ptr,  # [experts] local index or -1 (read with HAS_MAP)
    local_ids_ptr,  # [pairs] int32 out (written with GATED, by the first column tile)
    N, K, stride_am, stride_we, stride_wn, stride_om,
    ROW_DIV: tl.constexpr,  # a's row of pair p: p // ROW_DIV (top_k for x, 1 for act)
    GATED: tl.constexpr, HAS_MAP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pair = tl.program_id(0)
    expert = tl.load(ids_ptr + pair)
    if HAS_MAP:
        expert = tl.load(expert_map_ptr + expert)
    expert = expert.to(tl.int32)
    if GATED:
        tl.store(local_ids_ptr + pair, expert, mask=tl.program_id(1) == 0)
    if expert < 0:
        return  # another rank's expert: the combine skips this pair
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    a_row = a_ptr + (pair // ROW_DIV).to(tl.int64) * stride_am
    w_rows = w_ptr + expert.to(tl.int64) * stride_we + cols.to(tl.int64)[:, None] * stride_wn
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_row + ks, mask=k_ok, other=0.0).to(tl.float32)
        w_mask = col_ok[:, None] & k_ok[None, :]
        w = tl.load(w_rows + ks[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc += tl.sum(w * a[None, :], axis=1)
        if GATED:
            up = tl.load(w_rows + N * stride_wn + ks[None, :], mask=w_mask, other=0.0).to(tl.float32)
            acc_up += tl.sum(up * a[None, :], axis=1)
    out_ty = out_ptr.dtype.element_ty
    # gated: gate and up rounded to the dtype first, as the reference's gate-up product is
    result = _silu_and_mul(acc.to(out_ty), acc_up.to(out_ty)) if GATED else acc.to(out_ty)
    tl.store(out_ptr + pair.to(tl.int64) * stride_om + cols, result, mask=col_ok)


def fused_moe_gemv_triton(
    x: torch.Tensor,  # [num_tokens <= MAX_TOKENS, hidden]
    w13: torch.Tensor,  # [num_local, 2 * width, hidden]: gate rows, then up rows
    w2: torch.Tensor,  # [num_local, hidden, width]
    topk_weights: torch.Tensor,  # [num_tokens, top_k] fp32
    topk_ids: torch.Tensor,  # [num_tokens, top_k] global expert ids
    expert_map: torch.Tensor | None = None,  # [num_experts]: local index or -1
    *,
    gate_up: GemvTiles = GATE_UP_TILES,
    down_tiles: GemvTiles = DOWN_TILES,
) -> torch.Tensor:
    """Σ_k weight_k · expert_{id_k}(x) over this rank's experts, [num_tokens, hidden] in x's dtype:
    fused_moe_triton's contract, for a few tokens (the caller checks shapes: fused_moe_triton).
    Tiles: for benchmarks and tests (other K steps sum in another order)."""
    num_tokens, hidden = x.shape
    if num_tokens > MAX_TOKENS:
        raise ValueError(f"at most {MAX_TOKENS} tokens, got {num_tokens}")
    width, top_k = w2.shape[2], topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    out = torch.empty_like(x)
    if num_pairs == 0 or hidden == 0:
        return out
    x = x if x.stride(-1) == 1 else x.contiguous()
    ids = topk_ids.reshape(-1).contiguous()
    weights = topk_weights.float().contiguous()
    expert_map = expert_map.contiguous() if expert_map is not None else None
    act = torch.empty((num_pairs, width), dtype=x.dtype, device=x.device)
    down = torch.empty((num_pairs, hidden), dtype=x.dtype, device=x.device)
    local_ids = torch.empty(num_pairs, dtype=torch.int32, device=x.device)
    the_map = expert_map if expert_map is not None else ids
    t = gate_up
    _pair_gemv_kernel[(num_pairs, triton.cdiv(width, t.block_n))](
        act, x, w13, ids, the_map, local_ids, width, hidden, x.stride(0), w13.stride(0), w13.stride(1),
        act.stride(0), ROW_DIV=top_k, GATED=True, HAS_MAP=expert_map is not None, BLOCK_N=t.block_n,
        BLOCK_K=t.block_k, num_warps=t.num_warps, num_stages=t.num_stages,
    )  # fmt: skip
    t = down_tiles
    _pair_gemv_kernel[(num_pairs, triton.cdiv(hidden, t.block_n))](
        down, act, w2, ids, the_map, local_ids, hidden, width, act.stride(0), w2.stride(0), w2.stride(1),
        down.stride(0), ROW_DIV=1, GATED=False, HAS_MAP=expert_map is not None, BLOCK_N=t.block_n,
        BLOCK_K=t.block_k, num_warps=t.num_warps, num_stages=t.num_stages,
    )  # fmt: skip
    block_h = min(512, triton.next_power_of_2(hidden))
    block_t = triton.next_power_of_2(num_tokens)
    _combine_kernel[(1, triton.cdiv(hidden, block_h))](
        out, down, weights, local_ids, num_tokens, hidden, out.stride(0), down.stride(0),
        weights.stride(0), TOP_K=top_k, K_PAD=max(2, triton.next_power_of_2(top_k)), BLOCK_T=block_t,
        BLOCK_H=block_h, num_warps=4,
    )  # fmt: skip
    return out
