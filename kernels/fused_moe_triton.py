"""Fused mixture-of-experts in Triton (reference: fused_moe_torch in kernels/fused_moe.py).

    out[t] = Σ_k w[t, k] · down_e(silu(gate_e(x[t])) * up_e(x[t])),  e = expert of (t, k) on this rank

Six launches, none of which waits for the host:

1. `_count_kernel` (grid: chunks of the (token, slot) pairs): maps each pair's global expert id to
   this rank's local index through `expert_map` (-1: another rank's expert, skipped), stores it, and
   counts the pairs per local expert in its chunk (a histogram) plus the exclusive prefix of that
   histogram.
2. `_scan_kernel` (one program): per expert, where each chunk's pairs start among the expert's pairs;
   each expert's group padded to BLOCK_M rows, and the groups' start rows (a cumsum): the total is the
   number of padded rows.
3. `_place_kernel` (grid: max(chunks, row-block groups)): each pair goes to row
   `start[e] + (pairs of e in earlier chunks) + (its rank among e's pairs in its chunk)`, the rank
   taken from a sort of the chunk by (expert, pair): pairs sit in (expert, pair index) order, as the
   reference's stable argsort puts them. The same programs label each BLOCK_M-row block with its
   expert (-1: past the last group) and write the sentinel `num_pairs` into each group's padding.
4. `_moe_gemm_kernel` GATED (grid: row blocks x width tiles): x's rows of a block's pairs times the
   block's expert's gate and up rows, two fp32 accumulators, SiLU-and-mul in the epilogue → act
   [pairs, width]. Fused rather than a separate elementwise kernel: the program already holds the
   gate and up tiles of the same columns, so fusing costs a second accumulator and saves a launch, a
   [pairs, 2 * width] write and its read back (decode is launch- and bandwidth-bound).
5. `_moe_gemm_kernel` (down), then `_combine_kernel` (grid: token blocks x hidden tiles): each token's k
   rows weighted and summed in fp32 in ascending local expert id — the reference's order — and
   rounded once.

No host synchronisation: every buffer's size follows from (tokens, top_k, local experts, BLOCK_M) on
the host: a rank's padded rows are at most pairs + min(experts, pairs) · (BLOCK_M - 1), and programs
of blocks past the real total exit at once. So a CUDA graph captures the whole call and replays it on
new routing.

Rounding: the gate and up products, the activation and the down product are each rounded to the
input dtype where the reference's separate ops round them; the weighted sum runs in fp32 like the
reference's index_add_ and is rounded once. Products accumulate in fp32 (IEEE dots for fp32 inputs).

Batch invariance: the tiles are fixed per (hidden, width, dtype), never by the batch; a product row's
sums walk K in BLOCK_K steps of one instruction shape whatever else shares its block (a tensor-core
product's element (i, j) depends only on row i and column j); nothing is summed across programs (no
split-K, no atomics); a token's combine reads only its own k rows, in the order of its own experts.
So a token's output bytes do not depend on which other tokens share the call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from epochserve.kernels.activation_triton import _silu_and_mul
from epochserve.kernels.moe_topk_triton import slot_pad

# Pairs per alignment chunk at most (the place kernel sorts a chunk in registers).
MAX_CHUNK = 1024
# Row blocks each place-kernel program labels.
_LABEL_BLOCKS = 32


@dataclass(frozen=True, slots=True)
class MoeTiles:
    block_m: int  # pair rows per program; each expert's group is padded to a multiple of it
    block_n: int  # output columns per program (gate-up: of the width, gate and up each; down: hidden)
    block_k: int  # the K step of the accumulation (fixed: it decides the order of the sums)
    num_warps: int
    num_stages: int


def moe_tiles(hidden: int, width: int, dtype: torch.dtype) -> MoeTiles:
    """Tiles for a layer's shape and dtype, never for its batch (see the module docstring).

    16 rows: a decode step gives an expert a few tokens (Qwen3-30B-A3B at batch 64: 512 pairs over
    128 experts, ~4 each), so larger blocks would mostly multiply padding; 16 is the smallest tile the
    tensor cores take. 64 columns x 64-wide K steps keep a gate-up program's two weight tiles at 16 KB
    a stage. fp32 (IEEE dots on CUDA cores) steps 32 wide to keep its operands in registers."""
    del hidden, width  # one table entry per dtype for now: both Qwen MoE shapes are served by it
    if dtype == torch.float32:
        return MoeTiles(block_m=16, block_n=64, block_k=32, num_warps=4, num_stages=3)
    return MoeTiles(block_m=16, block_n=64, block_k=64, num_warps=4, num_stages=4)


@dataclass(frozen=True, slots=True)
class MoeAlignment:
    """Pairs (token · top_k + slot) grouped by local expert, each group padded to block_m rows."""

    sorted_pairs: torch.Tensor  # [max_rows] int32: a pair, or num_pairs in a group's padding
    block_experts: torch.Tensor  # [max_blocks] int32: each block's local expert, -1 past the last
    num_padded: torch.Tensor  # [1] int32: rows in use (Σ_e ceil(count_e / block_m) · block_m)
    local_ids: torch.Tensor  # [num_pairs] int32: each pair's local expert, -1: another rank's
    block_m: int


def max_padded_rows(num_pairs: int, num_local: int, block_m: int) -> int:
    """A bound on the padded rows known without the routing: each non-empty group pads < block_m rows,
    and at most min(experts, pairs) groups are non-empty. Rounded down to whole blocks (the true total
    is a multiple of block_m)."""
    groups = min(num_local, num_pairs)
    return (num_pairs + groups * (block_m - 1)) // block_m * block_m


@triton.jit(do_not_specialize=["num_pairs"])
def _count_kernel(
    topk_ids_ptr,  # [num_pairs] global expert ids (int32 or int64)
    expert_map_ptr,  # [num_experts] local index or -1 (unused without HAS_MAP)
    local_ids_ptr,  # [num_pairs] int32 out
    counts_ptr,  # [chunks, E_PAD] int32 out: pairs per expert in each chunk
    prefix_ptr,  # [chunks, E_PAD] int32 out: exclusive cumsum of counts within the chunk
    num_pairs,
    num_local,
    HAS_MAP: tl.constexpr,
    CHUNK: tl.constexpr,
    E_PAD: tl.constexpr,
):
    chunk = tl.program_id(0)
    idx = chunk * CHUNK + tl.arange(0, CHUNK)
    valid = idx < num_pairs
    ids = tl.load(topk_ids_ptr + idx, mask=valid, other=0)
    local = tl.load(expert_map_ptr + ids, mask=valid, other=-1) if HAS_MAP else ids
    local = local.to(tl.int32)
    mine = valid & (local >= 0) & (local < num_local)
    local = tl.where(mine, local, -1)
    tl.store(local_ids_ptr + idx, local, mask=valid)
    hist = tl.histogram(tl.where(mine, local, 0), E_PAD, mask=mine)
    experts = tl.arange(0, E_PAD)
    tl.store(counts_ptr + chunk * E_PAD + experts, hist)
    tl.store(prefix_ptr + chunk * E_PAD + experts, tl.cumsum(hist, 0) - hist)


@triton.jit(do_not_specialize=["num_chunks"])
def _scan_kernel(
    counts_ptr,  # [chunks, E_PAD] int32: pairs per expert in each chunk
    offsets_ptr,  # [chunks, E_PAD] int32 out: pairs of each expert in earlier chunks
    expert_start_ptr,  # [E_PAD] int32 out: each expert's first padded row
    expert_count_ptr,  # [E_PAD] int32 out: each expert's pairs
    num_padded_ptr,  # [1] int32 out
    num_chunks,
    BLOCK_M: tl.constexpr,
    E_PAD: tl.constexpr,
):
    experts = tl.arange(0, E_PAD)
    running = tl.zeros([E_PAD], dtype=tl.int32)
    for chunk in range(num_chunks):
        # (another buffer than counts': replicated elements would race a read after a write)
        hist = tl.load(counts_ptr + chunk * E_PAD + experts)
        tl.store(offsets_ptr + chunk * E_PAD + experts, running)
        running += hist
    padded = (running + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    tl.store(expert_start_ptr + experts, tl.cumsum(padded, 0) - padded)
    tl.store(expert_count_ptr + experts, running)
    tl.store(num_padded_ptr, tl.sum(padded, 0))


@triton.jit(do_not_specialize=["num_pairs", "num_chunks", "max_blocks"])
def _place_kernel(
    local_ids_ptr,  # [num_pairs] int32
    offsets_ptr,  # [chunks, E_PAD]: pairs of each expert in earlier chunks
    prefix_ptr,  # [chunks, E_PAD]: exclusive cumsum of the chunk's histogram
    expert_start_ptr,  # [E_PAD]
    expert_count_ptr,  # [E_PAD]
    sorted_pairs_ptr,  # [max_blocks * BLOCK_M] int32 out
    block_experts_ptr,  # [max_blocks] int32 out
    num_pairs,
    num_chunks,
    max_blocks,
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
    E_PAD: tl.constexpr,
    LABEL_BLOCKS: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid < num_chunks:
        slots = tl.arange(0, CHUNK)
        idx = pid * CHUNK + slots
        local = tl.load(local_ids_ptr + idx, mask=idx < num_pairs, other=-1)
        # key = (expert, place in chunk): sorted, a chunk's pairs of one expert are contiguous, in
        # pair order; others' pairs and the tail get keys past every real one.
        none = E_PAD * CHUNK
        key = tl.sort(tl.where(local >= 0, local * CHUNK + slots, none))
        real = key < none
        expert = tl.where(real, key // CHUNK, 0)
        table = pid * E_PAD + expert
        row = (
            tl.load(expert_start_ptr + expert, mask=real, other=0)
            + tl.load(offsets_ptr + table, mask=real, other=0)
            + slots  # position in the sorted chunk ...
            - tl.load(prefix_ptr + table, mask=real, other=0)  # ... minus the chunk's earlier experts
        )
        tl.store(sorted_pairs_ptr + row, pid * CHUNK + key % CHUNK, mask=real)
    # Label row blocks with their expert; fill each group's padding with the sentinel. (Rows written
    # here are padding, rows written above are pairs: disjoint, so no ordering is needed.)
    blocks = pid * LABEL_BLOCKS + tl.arange(0, LABEL_BLOCKS)
    in_range = blocks < max_blocks
    experts = tl.arange(0, E_PAD)
    start = tl.load(expert_start_ptr + experts)
    count = tl.load(expert_count_ptr + experts)
    end = start + (count + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    first_row = blocks * BLOCK_M
    hit = (start[None, :] <= first_row[:, None]) & (first_row[:, None] < end[None, :])
    used = tl.sum(hit.to(tl.int32), 1) > 0
    owner = tl.sum(tl.where(hit, experts[None, :], 0), 1)
    tl.store(block_experts_ptr + blocks, tl.where(used, owner, -1), mask=in_range)
    owner_start = tl.sum(tl.where(hit, start[None, :], 0), 1)
    owner_count = tl.sum(tl.where(hit, count[None, :], 0), 1)
    rows = first_row[:, None] + tl.arange(0, BLOCK_M)[None, :]
    padding = (in_range & used)[:, None] & (rows - owner_start[:, None] >= owner_count[:, None])
    tl.store(sorted_pairs_ptr + rows, num_pairs, mask=padding)


def moe_align(
    topk_ids: torch.Tensor,  # [num_tokens, top_k] global expert ids
    num_local: int,
    block_m: int,
    expert_map: torch.Tensor | None = None,  # [num_experts]: local index or -1
    *,
    max_chunk: int = MAX_CHUNK,
) -> MoeAlignment:
    """Group the (token, slot) pairs by local expert on the device, each group padded to block_m rows
    (see the module docstring); nothing waits for the device. max_chunk: a power of two (tests)."""
    if topk_ids.dim() != 2:
        raise ValueError(f"expected topk_ids [num_tokens, top_k], got {tuple(topk_ids.shape)}")
    device = topk_ids.device
    flat = topk_ids.reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    num_pairs = flat.numel()
    chunk = min(max_chunk, max(16, triton.next_power_of_2(max(num_pairs, 1))))
    num_chunks = triton.cdiv(num_pairs, chunk)
    e_pad = max(16, triton.next_power_of_2(num_local))
    max_rows = max_padded_rows(num_pairs, num_local, block_m)
    max_blocks = max_rows // block_m
    # one int32 workspace: counts, offsets, prefix (each [chunks, e_pad]), expert start, expert count,
    # num_padded
    table = num_chunks * e_pad
    work = torch.empty(3 * table + 2 * e_pad + 1, dtype=torch.int32, device=device)
    counts, offsets, prefix = work[:table], work[table : 2 * table], work[2 * table : 3 * table]
    expert_start, expert_count = work[3 * table : 3 * table + e_pad], work[3 * table + e_pad : -1]
    num_padded = work[-1:]
    local_ids = torch.empty(num_pairs, dtype=torch.int32, device=device)
    sorted_pairs = torch.empty(max_rows, dtype=torch.int32, device=device)
    block_experts = torch.empty(max_blocks, dtype=torch.int32, device=device)
    if num_pairs == 0:
        num_padded.zero_()
        return MoeAlignment(sorted_pairs, block_experts, num_padded, local_ids, block_m)
    if expert_map is not None and not expert_map.is_contiguous():
        expert_map = expert_map.contiguous()
    _count_kernel[(num_chunks,)](
        flat, expert_map if expert_map is not None else flat, local_ids, counts, prefix, num_pairs,
        num_local, HAS_MAP=expert_map is not None, CHUNK=chunk, E_PAD=e_pad, num_warps=4,
    )  # fmt: skip
    _scan_kernel[(1,)](
        counts, offsets, expert_start, expert_count, num_padded, num_chunks, BLOCK_M=block_m, E_PAD=e_pad,
        num_warps=4,
    )  # fmt: skip
    programs = max(num_chunks, triton.cdiv(max_blocks, _LABEL_BLOCKS))
    _place_kernel[(programs,)](
        local_ids, offsets, prefix, expert_start, expert_count, sorted_pairs, block_experts, num_pairs,
        num_chunks, max_blocks, BLOCK_M=block_m, CHUNK=chunk, E_PAD=e_pad, LABEL_BLOCKS=_LABEL_BLOCKS,
        num_warps=4,
    )  # fmt: skip
    return MoeAlignment(sorted_pairs, block_experts, num_padded, local_ids, block_m)


@triton.jit
def _dot(a, w, acc, PRECISION: tl.constexpr, ROWWISE: tl.constexpr):
    """acc + a @ w. ROWWISE (the CPU interpreter): as a broadcast product summed over K in fp32,
    because the interpreter's tl.dot is NumPy's BLAS, whose sums for a row follow the row's place
    in the tile (OpenBLAS's sgemm micro-kernel takes rows 6 at a time); a tensor-core product's row
    does not, and neither does this one, so the interpreter tests can check batch invariance in bytes.
    16-bit products are exact in fp32 either way."""
    if ROWWISE:
        return acc + tl.sum(a.to(tl.float32)[:, :, None] * w.to(tl.float32)[None, :, :], 1)
    return tl.dot(a, w, acc, input_precision=PRECISION)


@triton.jit(do_not_specialize=["num_pairs"])
def _moe_gemm_kernel(
    out_ptr,  # [num_pairs, N]
    a_ptr,  # GATED: x [tokens, K]; else act [num_pairs, K]
    w_ptr,  # [experts, N (or 2N, gate rows first with GATED), K]
    sorted_pairs_ptr,
    block_experts_ptr,
    num_pairs,
    N,
    K,
    stride_am,
    stride_we,
    stride_wn,
    stride_om,
    up_offset,  # GATED: the up rows' offset from the gate rows (width * stride_wn)
    ROW_DIV: tl.constexpr,  # a's row of pair p: p // ROW_DIV (top_k for x, 1 for act)
    GATED: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ROWWISE_DOT: tl.constexpr,
):
    block = tl.program_id(0)
    expert = tl.load(block_experts_ptr + block)
    if expert < 0:
        return  # past the last group
    pairs = tl.load(sorted_pairs_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = pairs < num_pairs  # padding holds num_pairs
    rows = (pairs // ROW_DIV).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + ks[None, :]
    w_ptrs = w_ptr + expert.to(tl.int64) * stride_we + cols.to(tl.int64)[None, :] * stride_wn + ks[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a_mask = row_ok[:, None]
            w_mask = col_ok[None, :]
        else:
            a_mask = row_ok[:, None] & (ks[None, :] < K - k0)
            w_mask = col_ok[None, :] & (ks[:, None] < K - k0)
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        w = tl.load(w_ptrs, mask=w_mask, other=0.0)
        acc = _dot(a, w, acc, DOT_PRECISION, ROWWISE_DOT)
        if GATED:
            up = tl.load(w_ptrs + up_offset, mask=w_mask, other=0.0)
            acc_up = _dot(a, up, acc_up, DOT_PRECISION, ROWWISE_DOT)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    out_ty = out_ptr.dtype.element_ty
    # gated: gate and up rounded to the dtype first, as the reference's gate-up product is
    result = _silu_and_mul(acc.to(out_ty), acc_up.to(out_ty)) if GATED else acc.to(out_ty)
    out_ptrs = out_ptr + pairs.to(tl.int64)[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, result, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=["num_tokens"])
def _combine_kernel(
    out_ptr,  # [tokens, H]
    down_ptr,  # [num_pairs, H]: each pair's expert output (rows of others' experts never read)
    weights_ptr,  # [tokens, TOP_K] fp32
    local_ids_ptr,  # [tokens, TOP_K] int32, -1: another rank's expert
    num_tokens,
    H,
    stride_om,
    stride_dm,
    stride_wt,
    TOP_K: tl.constexpr,
    K_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    token_ok = tokens < num_tokens
    tokens = tokens.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    col_ok = cols < H
    slots = tl.arange(0, K_PAD)
    slot_ok = token_ok[:, None] & (slots[None, :] < TOP_K)
    local = tl.load(local_ids_ptr + tokens[:, None] * TOP_K + slots[None, :], mask=slot_ok, other=-1)
    weight = tl.load(weights_ptr + tokens[:, None] * stride_wt + slots[None, :], mask=slot_ok, other=0.0)
    mine = local >= 0
    # Each slot's place in ascending local expert id (a token's ids are distinct; absent slots last).
    key = tl.where(mine, local, (1 << 30) + slots[None, :])
    rank = tl.sum((key[:, None, :] < key[:, :, None]).to(tl.int32), 2)  # [BLOCK_T, K_PAD]
    acc = tl.zeros([BLOCK_T, BLOCK_H], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        chosen = rank == j
        slot = tl.sum(tl.where(chosen, slots[None, :], 0), 1)  # [BLOCK_T]
        present = tl.sum((chosen & mine).to(tl.int32), 1) > 0
        w = tl.sum(tl.where(chosen, weight, 0.0), 1)  # exact: one term is non-zero
        rows = (tokens * TOP_K + slot) * stride_dm
        take = present[:, None] & col_ok[None, :]
        part = tl.load(down_ptr + rows[:, None] + cols[None, :], mask=take, other=0.0)
        acc = tl.where(take, acc + part.to(tl.float32) * w[:, None], acc)
    out_ptrs = out_ptr + tokens[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=token_ok[:, None] & col_ok[None, :])


def check_moe_shapes(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> None:
    """ValueError unless x [n, h], w13 [e, 2i, h] and w2 [e, h, i] fit, share a dtype, and the
    weights' last dimension is contiguous (the kernels' contract)."""
    if x.dim() != 2 or w13.dim() != 3 or w2.dim() != 3:
        raise ValueError(f"expected x [n, h], w13 [e, 2i, h], w2 [e, h, i]; got {tuple(x.shape)}, "
                         f"{tuple(w13.shape)}, {tuple(w2.shape)}")  # fmt: skip
    hidden, (num_local, _, width) = x.shape[1], w2.shape
    if w13.shape != (num_local, 2 * width, hidden) or w2.shape[1] != hidden:
        raise ValueError(f"w13 {tuple(w13.shape)} and w2 {tuple(w2.shape)} do not fit x {tuple(x.shape)}")
    if not (x.dtype == w13.dtype == w2.dtype):
        raise ValueError(f"x is {x.dtype}, w13 {w13.dtype}, w2 {w2.dtype}")
    if w13.stride(-1) != 1 or w2.stride(-1) != 1:
        raise ValueError("expert weights need a contiguous last dimension")


def fused_moe_triton(
    x: torch.Tensor,  # [num_tokens, hidden]
    w13: torch.Tensor,  # [num_local, 2 * width, hidden]: gate rows, then up rows
    w2: torch.Tensor,  # [num_local, hidden, width]
    topk_weights: torch.Tensor,  # [num_tokens, top_k] fp32
    topk_ids: torch.Tensor,  # [num_tokens, top_k] global expert ids
    expert_map: torch.Tensor | None = None,  # [num_experts]: local index or -1
    *,
    tiles: MoeTiles | None = None,
) -> torch.Tensor:
    """Σ_k weight_k · expert_{id_k}(x) over this rank's experts: [num_tokens, hidden] in x's dtype, the
    same contract as fused_moe_torch (the caller all-reduces across ranks). tiles: for benchmarks."""
    check_moe_shapes(x, w13, w2)
    num_tokens, hidden = x.shape
    num_local, width = w2.shape[0], w2.shape[2]
    if topk_ids.shape != topk_weights.shape or topk_ids.shape[0] != num_tokens:
        raise ValueError(f"topk ids {tuple(topk_ids.shape)} and weights {tuple(topk_weights.shape)} differ")
    top_k = topk_ids.shape[1]
    out = torch.empty_like(x)
    if num_tokens == 0 or hidden == 0:
        return out
    if x.stride(-1) != 1:
        x = x.contiguous()
    weights = topk_weights.float().contiguous()
    t = tiles or moe_tiles(hidden, width, x.dtype)
    align = moe_align(topk_ids, num_local, t.block_m, expert_map)
    num_pairs = num_tokens * top_k
    max_blocks = align.block_experts.numel()
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    act = torch.empty((num_pairs, width), dtype=x.dtype, device=x.device)
    down = torch.empty((num_pairs, hidden), dtype=x.dtype, device=x.device)
    launch = dict(BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k, DOT_PRECISION=precision,
                  ROWWISE_DOT=not x.is_cuda, num_warps=t.num_warps, num_stages=t.num_stages)  # fmt: skip
    if max_blocks:
        _moe_gemm_kernel[(max_blocks, triton.cdiv(width, t.block_n))](
            act, x, w13, align.sorted_pairs, align.block_experts, num_pairs, width, hidden,
            x.stride(0), w13.stride(0), w13.stride(1), act.stride(0), width * w13.stride(1),
            ROW_DIV=top_k, GATED=True, EVEN_K=hidden % t.block_k == 0, **launch,
        )  # fmt: skip
        _moe_gemm_kernel[(max_blocks, triton.cdiv(hidden, t.block_n))](
            down, act, w2, align.sorted_pairs, align.block_experts, num_pairs, hidden, width,
            act.stride(0), w2.stride(0), w2.stride(1), down.stride(0), 0,
            ROW_DIV=1, GATED=False, EVEN_K=width % t.block_k == 0, **launch,
        )  # fmt: skip
    # Tokens per program: any number gives a token the same operations (so it may follow the batch).
    block_t = min(8, triton.next_power_of_2(num_tokens))
    block_h = min(512, triton.next_power_of_2(hidden))
    _combine_kernel[(triton.cdiv(num_tokens, block_t), triton.cdiv(hidden, block_h))](
        out, down, weights, align.local_ids, num_tokens, hidden, out.stride(0), down.stride(0),
        weights.stride(0), TOP_K=top_k, K_PAD=slot_pad(top_k), BLOCK_T=block_t,
        BLOCK_H=block_h, num_warps=4,
    )  # fmt: skip
    return out
