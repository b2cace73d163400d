"""Mixture-of-experts for a few tokens (decode at batch 1-4) as matrix-vector products, routing
included, in Triton.

Same contract and rounding as topk_route_triton followed by fused_moe_triton (references:
topk_route and fused_moe_torch in kernels/fused_moe.py), for calls of at most MAX_TOKENS tokens
outside batch_invariant mode (worker/layers/ops.py): `routed_moe_gemv_triton` from the router's
logits, `moe_gemv_triton` from its choice (steps 2 and 3 below; the engine's router product may
have routed already, kernels/rmsnorm_gemv_triton.py). Why: a batch-1 decode step of a 48-layer MoE
model is bound by reading each layer's 8 experts and by launches; the grouped path spends a top-k
launch, three grouping launches and a combine launch per layer and pads each expert's one row to a
16-row tile. Here a token's k experts are distinct, so nothing needs grouping, and three launches
do the whole layer after the router's product:

1. moe_topk_triton's router (one program per token): weights and global expert ids (routing replay).
2. `_gate_up_kernel` (grid: (token, slot) pairs x width tiles): the pair's expert's gate and up rows
   for the token's x → SiLU-and-mul, rounded where the reference rounds → act [pairs, width]. The
   first tile's program stores the pair's local expert (-1: another rank's; its act rows stay
   unwritten).
3. `_down_combine_kernel` (grid: tokens x hidden tiles): the token's k experts side by side in one
   [k, BLOCK_N, BLOCK_K] tile, so each K step loads the down rows of all k experts at once; each
   expert's product rounded to the dtype as the reference's down product is, then weighted and
   summed over the experts in fp32 (a fixed tree: the bits do not depend on the routing's order);
   the sum rounded once.

Measured and dropped (bench/moe_microbench.py --gemv-sweep, H100, docs/benchmarks.md): a down
product walking the k experts one after another in ascending local id (each K step waiting on one
expert's rows): 38.0 vs 34.6 us a layer call at batch 1, W1 5% slower (2026-12-07); routing inside
every gate-up program instead of launch 1 (each program's 16 cross-warp reductions come before its
first weight load: no faster at batch 1, 5% slower at 4); in that walk, one K loop per expert
(the same at batch 1, slower at 4); the down product split over the k experts, a
program per (token, hidden tile, expert) and the last to arrive combining (kernels/arrival.py):
41.2 vs 36.1 us at batch 1 and 126 vs 104 at 4 (H100, 2026-12-07), W1 6% slower.

Each program sums its K steps in a fixed order (CUDA-core FMAs: one row gives the tensor cores
nothing to do) as gemv_triton does. A token's bits depend on how many tokens share the call only
through which path runs (this one, or the grouped one above MAX_TOKENS), which is why
batch_invariant mode never takes it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from epochserve.kernels.activation_triton import _silu_and_mul
from epochserve.kernels.fused_moe_triton import check_moe_shapes
from epochserve.kernels.gemv_triton import GemvTiles
from epochserve.kernels.moe_topk_triton import slot_pad, topk_route_triton
from epochserve.kernels.pdl import pdl_enabled, pdl_prologue

MAX_TOKENS = 4  # above, fused_moe_triton's grouped products read each touched expert once
# Per-kernel tiles (output rows per program, K step, warps, pipeline stages), fixed for every batch:
# bench/moe_microbench.py --gemv-sweep, Qwen3-30B-A3B layer, H100 2026-12-06 and -07 (the down
# product's, docs/benchmarks.md): 34.6 us a layer call at batch 1 (73% of the copy bandwidth), 105.5
# us at 4. The down product's grid is tokens x hidden tiles, so it wants narrow programs (2048 / 2 =
# 1024 at batch 1), each a tile of k x 2 rows x 256.
GATE_UP_TILES = GemvTiles(block_n=16, block_k=1024, num_warps=4, num_stages=3)
DOWN_TILES = GemvTiles(block_n=2, block_k=256, num_warps=4, num_stages=3)


@triton.jit
def _gate_up_kernel(
    act_ptr,  # [pairs, N] out
    x_ptr,  # [tokens, K]
    w_ptr,  # [local experts, 2N (gate rows, then up rows), K]
    ids_ptr,  # [pairs] global expert ids (the router's)
    expert_map_ptr,  # [E] local index or -1 (read with HAS_MAP)
    local_ids_ptr,  # [pairs] int32 out: local expert id, -1 for another rank's
    N, K, stride_xm, stride_we, stride_wn, stride_om,
    TOP_K: tl.constexpr, HAS_MAP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    pdl_prologue(PDL)
    pair = tl.program_id(0)
    token = pair // TOP_K
    first = tl.program_id(1) == 0
    expert_id = tl.load(ids_ptr + pair)
    if HAS_MAP:  # noqa: SIM108 (a constexpr branch: the other side's load is never compiled)
        expert = tl.load(expert_map_ptr + expert_id).to(tl.int32)
    else:
        expert = expert_id.to(tl.int32)
    tl.store(local_ids_ptr + pair, expert, mask=first)
    if expert < 0:
        return  # another rank's expert: the combine skips this pair
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    x_row = x_ptr + token.to(tl.int64) * stride_xm
    w_rows = w_ptr + expert.to(tl.int64) * stride_we + cols.to(tl.int64)[:, None] * stride_wn
    acc_gate = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_row + ks, mask=k_ok, other=0.0).to(tl.float32)
        w_mask = col_ok[:, None] & k_ok[None, :]
        gate = tl.load(w_rows + ks[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc_gate += tl.sum(gate * x[None, :], axis=1)
        up = tl.load(w_rows + N * stride_wn + ks[None, :], mask=w_mask, other=0.0).to(tl.float32)
        acc_up += tl.sum(up * x[None, :], axis=1)
    out_ty = act_ptr.dtype.element_ty
    # gate and up rounded to the dtype first, as the reference's gate-up product is
    act = _silu_and_mul(acc_gate.to(out_ty), acc_up.to(out_ty))
    tl.store(act_ptr + pair.to(tl.int64) * stride_om + cols, act, mask=col_ok)


@triton.jit
def _down_combine_kernel(
    out_ptr,  # [tokens, N]
    act_ptr,  # [pairs, K]
    w_ptr,  # [local experts, N, K]
    weights_ptr, local_ids_ptr,  # [pairs]: the router's weights, _gate_up_kernel's local ids
    N, K, stride_om, stride_am, stride_we, stride_wn,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    pdl_prologue(PDL)
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    slots = tl.arange(0, K_PAD)
    local = tl.load(local_ids_ptr + token * TOP_K + slots, mask=slots < TOP_K, other=-1)
    weight = tl.load(weights_ptr + token * TOP_K + slots, mask=slots < TOP_K, other=0.0)
    held = local >= 0  # this rank's expert (another rank's act row was never written)
    experts = tl.maximum(local, 0).to(tl.int64)
    w_rows = w_ptr + experts[:, None, None] * stride_we + cols.to(tl.int64)[None, :, None] * stride_wn
    a_rows = act_ptr + (token * TOP_K + slots)[:, None] * stride_am
    row_ok = held[:, None, None] & col_ok[None, :, None]
    acc = tl.zeros([K_PAD, BLOCK_N], dtype=tl.float32)  # each expert's product
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_rows + ks[None, :], mask=held[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_rows + ks[None, None, :], mask=row_ok & k_ok[None, None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * a.to(tl.float32)[:, None, :], axis=2)
    out_ty = out_ptr.dtype.element_ty
    # each expert's product rounded to the dtype (the reference's down output), weighted, summed in fp32
    parts = tl.where(held[:, None], acc.to(out_ty).to(tl.float32) * weight[:, None], 0.0)
    tl.store(out_ptr + token * stride_om + cols, tl.sum(parts, axis=0).to(out_ty), mask=col_ok)


def routed_moe_gemv_triton(
    x: torch.Tensor,  # [num_tokens <= MAX_TOKENS, hidden]
    router_logits: torch.Tensor,  # [num_tokens, num_experts]
    w13: torch.Tensor,  # [num_local, 2 * width, hidden]: gate rows, then up rows
    w2: torch.Tensor,  # [num_local, hidden, width]
    top_k: int,
    renormalize: bool,
    expert_map: torch.Tensor | None = None,  # [num_experts]: local index or -1
    *,
    gate_up: GemvTiles = GATE_UP_TILES,
    down_tiles: GemvTiles = DOWN_TILES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Σ_k weight_k · expert_{id_k}(x) over this rank's experts [num_tokens, hidden] in x's dtype,
    the routing weights fp32 and global expert ids int64 [num_tokens, top_k] by descending weight):
    topk_route_triton, then moe_gemv_triton (tiles: its)."""
    if router_logits.shape[0] != x.shape[0] or not 0 < top_k <= router_logits.shape[1]:
        raise ValueError(
            f"router logits {tuple(router_logits.shape)} do not fit {x.shape[0]} tokens, top {top_k}"
        )
    weights, ids = topk_route_triton(router_logits, top_k, renormalize)
    out = moe_gemv_triton(x, w13, w2, weights, ids, expert_map, gate_up=gate_up, down_tiles=down_tiles)
    return out, weights, ids


def moe_gemv_triton(
    x: torch.Tensor,  # [num_tokens <= MAX_TOKENS, hidden]
    w13: torch.Tensor,  # [num_local, 2 * width, hidden]: gate rows, then up rows
    w2: torch.Tensor,  # [num_local, hidden, width]
    weights: torch.Tensor,  # [num_tokens, top_k] fp32: the router's (topk_route_triton's)
    ids: torch.Tensor,  # [num_tokens, top_k] int64 global expert ids, distinct in a row
    expert_map: torch.Tensor | None = None,  # [num_experts]: local index or -1
    *,
    gate_up: GemvTiles = GATE_UP_TILES,
    down_tiles: GemvTiles = DOWN_TILES,
) -> torch.Tensor:
    """Σ_k weight_k · expert_{id_k}(x) over this rank's experts [num_tokens, hidden] in x's dtype:
    fused_moe_triton's contract for a few tokens. Tiles: for benchmarks and tests (other K steps
    sum in another order)."""
    check_moe_shapes(x, w13, w2)
    num_tokens, hidden = x.shape
    if num_tokens > MAX_TOKENS:
        raise ValueError(f"at most {MAX_TOKENS} tokens, got {num_tokens}")
    if weights.shape != ids.shape or ids.shape[0] != num_tokens:
        raise ValueError(
            f"routing {tuple(weights.shape)} / {tuple(ids.shape)} does not fit {num_tokens} tokens"
        )
    top_k, width = ids.shape[1], w2.shape[2]
    num_pairs = num_tokens * top_k
    out = torch.empty_like(x)
    if num_pairs == 0 or hidden == 0:
        return out
    weights, ids = weights.contiguous(), ids.contiguous()
    x = x if x.stride(-1) == 1 else x.contiguous()
    flat_ids = ids.reshape(-1)
    expert_map = expert_map.contiguous() if expert_map is not None else None
    act = torch.empty((num_pairs, width), dtype=x.dtype, device=x.device)
    local_ids = torch.empty(num_pairs, dtype=torch.int32, device=x.device)
    pdl = pdl_enabled(x.device)
    t = gate_up
    _gate_up_kernel[(num_pairs, max(1, triton.cdiv(width, t.block_n)))](
        act, x, w13, flat_ids, expert_map if expert_map is not None else flat_ids, local_ids,
        width, hidden, x.stride(0), w13.stride(0), w13.stride(1), act.stride(0), TOP_K=top_k,
        HAS_MAP=expert_map is not None, BLOCK_N=t.block_n, BLOCK_K=t.block_k, PDL=pdl,
        num_warps=t.num_warps, num_stages=t.num_stages, launch_pdl=pdl,
    )  # fmt: skip
    t = down_tiles
    _down_combine_kernel[(num_tokens, triton.cdiv(hidden, t.block_n))](
        out, act, w2, weights, local_ids, hidden, width, out.stride(0), act.stride(0), w2.stride(0),
        w2.stride(1), TOP_K=top_k, K_PAD=slot_pad(top_k), BLOCK_N=t.block_n,
        BLOCK_K=t.block_k, PDL=pdl, num_warps=t.num_warps, num_stages=t.num_stages, launch_pdl=pdl,
    )  # fmt: skip
    return out
