"""Triton programs of paged attention (the Python entry is kernels/paged_attention_triton.py).

One program owns a tile of BLOCK_M query rows of one sequence and one kv head: BLOCK_Q consecutive
new tokens × the GROUP query heads that share the kv head (row r = token r // GROUP, head r % GROUP),
so each key/value tile is read once for the whole group. The context is cut into partitions of
`split_tokens` positions counted from position 0; each partition is an online softmax over key tiles
of BLOCK_N positions, also counted from the partition start. Partitions are folded together in
increasing order by `_merge_state`, either inside the program (loop schedule) or by
`_reduce_partitions_kernel` after one program per partition wrote its partial state (split
schedule). Both schedules run the same float operations in the same order on the same values, so a
query row's output is bit-identical whichever schedule, tile neighbours or batch it had.

ROTARY (decode): the query arrives unrotated and the new token's key and value are not yet in the
cache; each program rotates its query rows in registers and the program whose partition holds the
new position rotates and stores the key and value first (kernels/decode_rotary.py): the rotary +
store launch before attention folded in, with the same bits.

The split schedule can also fold in its own launch (FOLD, kernels/arrival.py): each partition
program takes a ticket from a per-(sequence, kv head) counter after storing its partial state, and
the program that draws the last ticket folds the partitions with `_fold_partitions`, as the reduce
kernel does (same order, same bits). One launch a layer fewer at decode.

Softmax runs in the log2 domain (scores pre-multiplied by scale * log2(e), exp2 instead of exp).
"""

from __future__ import annotations

import triton
import triton.language as tl

from epochserve.kernels.arrival import last_to_arrive
from epochserve.kernels.decode_rotary import _rotate_rows, _store_new_kv
from epochserve.kernels.pdl import pdl_prologue

# A finite "minus infinity" for running maxima: exp2(NEG_INIT - NEG_INIT) = 1 and
# exp2(NEG_INIT - real max) = 0, so fully masked rows and partitions never produce inf - inf = NaN
# and fold into a running state as exact no-ops.
NEG_INIT = tl.constexpr(-1.0e30)


@triton.jit
def _rescale(m_old, m_new):
    """exp2(m_old - m_new), exactly 1 when the max did not move: folding in a fully masked tile or
    partition is then an exact no-op whatever the hardware exp2 returns for 0."""
    return tl.where(m_old == m_new, 1.0, tl.exp2(m_old - m_new))


@triton.jit
def _merge_state(m_run, l_run, acc_run, m_i, l_i, acc):
    """Fold one partition's (max [R], sum [R], unnormalized output [R, D]) into the running state.

    Explicit fma pins the rounding: the compiler cannot fuse these products differently in the two
    kernels that call this (tile loop schedule and reduce), which would break bit-identity.
    """
    m_new = tl.maximum(m_run, m_i)
    alpha = _rescale(m_run, m_new)
    beta = _rescale(m_i, m_new)
    l_new = tl.fma(l_run, alpha, l_i * beta)
    acc_new = tl.fma(acc_run, alpha[:, None], acc * beta[:, None])
    return m_new, l_new, acc_new


@triton.jit
def _attend_partition(
    q,  # [BLOCK_M, HEAD_DIM_PAD] query rows of the tile
    q_pos,  # [BLOCK_M] position of each row's token (rows past the tile's tokens: -1)
    k_cache_ptr,
    v_cache_ptr,
    block_table_ptr,  # this sequence's row of block_tables
    kv_head,
    kv_lo,
    kv_hi,
    scale_log2e,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online softmax of the tile's rows over key positions [kv_lo, kv_hi), in tiles of BLOCK_N.

    Returns (m_i [BLOCK_M], l_i [BLOCK_M], acc [BLOCK_M, HEAD_DIM_PAD]), all fp32, acc unnormalized.
    """
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_mask = offs_d < HEAD_DIM
    m_i = tl.full([BLOCK_M], NEG_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start in range(kv_lo, kv_hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_mask = offs_n < kv_hi
        # Page of each key position, then its flat offset (int64: caches exceed 2**31 elements).
        pages = tl.load(block_table_ptr + offs_n // PAGE_SIZE, mask=n_mask, other=0).to(tl.int64)
        in_page = offs_n % PAGE_SIZE
        k_offs = pages * stride_kb + in_page * stride_ks + kv_head * stride_kh
        v_offs = pages * stride_vb + in_page * stride_vs + kv_head * stride_vh
        kv_mask = n_mask[:, None] & d_mask[None, :]
        k = tl.load(k_cache_ptr + k_offs[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + v_offs[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2e  # [BLOCK_M, BLOCK_N]
        # Causal: a row sees keys up to its own position (this also bounds keys by seq_len).
        s = tl.where(offs_n[None, :] <= q_pos[:, None], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = _rescale(m_i, m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _find_seq(index, starts_ptr, num_seqs, STEP: tl.constexpr):
    """Largest s in [0, num_seqs) with starts[s] // STEP + s * (STEP > 1) <= index (binary search).

    With STEP = 1 this finds the sequence holding flat token `index` (starts = query_start_loc);
    with STEP = BLOCK_Q it finds the sequence owning query tile `index` (each sequence's tiles are
    numbered from query_start_loc[s] // BLOCK_Q + s, so no two sequences share a tile).
    """
    lo = 0
    hi = num_seqs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        first = tl.load(starts_ptr + mid) // STEP
        if STEP > 1:
            first += mid
        if first <= index:
            lo = mid
        else:
            hi = mid
    return lo


@triton.jit(do_not_specialize=["num_seqs", "split_tokens", "num_parts"])
def _paged_attention_kernel(
    out_ptr,  # [num_tokens, num_heads, head_dim] (single and loop schedules)
    part_acc_ptr,  # [num_tokens, num_heads, num_parts, HEAD_DIM_PAD] fp32 (split schedule)
    part_m_ptr,  # [num_tokens, num_heads, num_parts] fp32
    part_l_ptr,  # [num_tokens, num_heads, num_parts] fp32
    q_ptr,  # [num_tokens, num_heads, head_dim] (ROTARY: not yet rotated)
    k_cache_ptr,  # [num_blocks, PAGE_SIZE, num_kv_heads, head_dim]
    v_cache_ptr,
    block_tables_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32
    query_start_loc_ptr,  # [num_seqs + 1] int32
    counters_ptr,  # [>= num_seqs * num_kv_heads] int32, all 0 (FOLD: left all 0 again)
    # ROTARY only: the new tokens' key and value [num_tokens, num_kv_heads, head_dim] (not rotated),
    # positions [num_tokens], cache slots [num_tokens] (negative: not stored), the fp32 cos/sin
    # table, Qwen3's q/k norm weights (HAS_NORM) and their eps.
    k_new_ptr,
    v_new_ptr,
    positions_ptr,
    slot_mapping_ptr,
    cos_sin_ptr,
    q_norm_ptr,
    k_norm_ptr,
    eps,
    scale_log2e,
    num_seqs,
    split_tokens,  # partition length in positions, a multiple of BLOCK_N
    num_parts,  # partitions per row in the partial buffers (split schedule)
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    stride_knt,
    stride_knh,
    stride_vnt,
    stride_vnh,
    stride_cs,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    # "single": the whole context in one pass; "loop": partitions folded in-program; "split": this
    # program does partition program_id(2) only and writes its partial state.
    SCHEDULE: tl.constexpr,
    DECODE: tl.constexpr,  # every sequence has at most one new token (max_query_len <= 1)
    DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr,
    FOLD: tl.constexpr,  # split schedule at decode: the last partition program folds (module doc)
    GROUP_PAD: tl.constexpr,  # the fold's rows: GROUP padded to a power of two
    ROTARY: tl.constexpr,  # DECODE: rotate q and k and store the new key/value here (module doc)
    HAS_NORM: tl.constexpr,  # ROTARY: q/k norm first
):
    pdl_prologue(PDL)
    kv_head = tl.program_id(1)
    # DECODE: at most one new token per sequence, so program i owns sequence i (no search).
    seq = tl.program_id(0) if DECODE else _find_seq(tl.program_id(0), query_start_loc_ptr, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    # First token of the tile, counted in the sequence.
    tok0 = 0 if DECODE else (tl.program_id(0) - (q_start // BLOCK_Q + seq)) * BLOCK_Q
    if tok0 >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    num_heads = tl.num_programs(1) * GROUP

    rows = tl.arange(0, BLOCK_M)
    tok = tok0 + rows // GROUP
    row_mask = (rows < BLOCK_Q * GROUP) & (tok < q_len)
    head = kv_head * GROUP + rows % GROUP
    q_pos = tl.where(row_mask, seq_len - q_len + tok, -1)
    token = (q_start + tok).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    qd_mask = row_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    if ROTARY:
        cos_sin_row = cos_sin_ptr + tl.load(positions_ptr + q_start).to(tl.int64) * stride_cs
        q_rows = q_ptr + token * stride_qt + head * stride_qh
        q = _rotate_rows(
            q_rows, row_mask, cos_sin_row, q_norm_ptr, eps, HEAD_DIM // 2, HEAD_DIM_PAD, HAS_NORM
        )
    else:
        q_offs = token[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :]
        q = tl.load(q_ptr + q_offs, mask=qd_mask, other=0.0)
    # Keys the tile needs: up to its last token's position.
    kv_hi = seq_len - q_len + tl.minimum(q_len, tok0 + BLOCK_Q)
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt

    # Every schedule walks the same partitions [lo, lo + split_tokens) with the same code; they differ
    # in which partitions a program takes and where the state goes. "single" takes the whole context
    # as one partition: folding it into the initial state would return it unchanged, so it is skipped.
    first = tl.program_id(2) * split_tokens if SCHEDULE == "split" else 0
    if SCHEDULE == "split" and first >= kv_hi:  # past this tile's context
        return
    if ROTARY:  # DECODE: the new token is at kv_hi - 1; the program whose partition holds it stores it
        if SCHEDULE != "split" or kv_hi - 1 < first + split_tokens:
            slot = tl.load(slot_mapping_ptr + q_start).to(tl.int64)
            if slot >= 0:  # padding rows of a CUDA-graph batch own no slot
                new = q_start.to(tl.int64)
                k_dst = k_cache_ptr + (slot // PAGE_SIZE) * stride_kb + (slot % PAGE_SIZE) * stride_ks
                v_dst = v_cache_ptr + (slot // PAGE_SIZE) * stride_vb + (slot % PAGE_SIZE) * stride_vs
                _store_new_kv(
                    k_new_ptr + new * stride_knt + kv_head * stride_knh,
                    v_new_ptr + new * stride_vnt + kv_head * stride_vnh,
                    k_dst + kv_head * stride_kh, v_dst + kv_head * stride_vh,
                    cos_sin_row, k_norm_ptr, eps, HEAD_DIM // 2, HEAD_DIM_PAD, HAS_NORM,
                )  # fmt: skip
        tl.debug_barrier()  # every thread of the program sees the stored key/value before it reads them
    if SCHEDULE == "loop":
        m_run = tl.full([BLOCK_M], NEG_INIT, tl.float32)
        l_run = tl.zeros([BLOCK_M], tl.float32)
        acc_run = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
        for lo in range(0, kv_hi, split_tokens):
            m_i, l_i, acc = _attend_partition(
                q, q_pos, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head, lo,
                tl.minimum(lo + split_tokens, kv_hi), scale_log2e,
                stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, BLOCK_N, PAGE_SIZE, DOT_PRECISION,
            )  # fmt: skip
            m_run, l_run, acc_run = _merge_state(m_run, l_run, acc_run, m_i, l_i, acc)
    else:  # one partition: [first, first + split_tokens), or the whole context when "single"
        last = tl.minimum(first + split_tokens, kv_hi) if SCHEDULE == "split" else kv_hi
        m_run, l_run, acc_run = _attend_partition(
            q, q_pos, k_cache_ptr, v_cache_ptr, block_table_ptr, kv_head, first, last, scale_log2e,
            stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            HEAD_DIM, HEAD_DIM_PAD, BLOCK_M, BLOCK_N, PAGE_SIZE, DOT_PRECISION,
        )  # fmt: skip
    if SCHEDULE == "split":
        part_row = (token * num_heads + head) * num_parts + tl.program_id(2)
        tl.store(part_m_ptr + part_row, m_run, mask=row_mask)
        tl.store(part_l_ptr + part_row, l_run, mask=row_mask)
        acc_offs = part_row[:, None] * HEAD_DIM_PAD + offs_d[None, :]
        tl.store(part_acc_ptr + acc_offs, acc_run, mask=row_mask[:, None])
        if FOLD:  # DECODE: one token; its partitions are those below kv_hi
            counter = counters_ptr + seq * tl.num_programs(1) + kv_head
            if last_to_arrive(counter, (kv_hi - 1) // split_tokens + 1):
                _fold_partitions(
                    out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, q_start.to(tl.int64), kv_head,
                    kv_hi - 1, split_tokens, num_parts, num_heads, stride_ot, stride_oh,
                    GROUP, GROUP_PAD, HEAD_DIM, HEAD_DIM_PAD,
                )  # fmt: skip
    else:
        # Rows past the tile's tokens have l_run = 0; dividing them by 1 keeps NaN out of registers.
        out = acc_run / tl.where(l_run > 0, l_run, 1.0)[:, None]
        o_offs = token[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
        tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=qd_mask)


@triton.jit
def _fold_partitions(
    out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, token, kv_head, pos, split_tokens, num_parts,
    num_heads, stride_ot, stride_oh,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
):  # fmt: skip
    """Fold one token's partitions 0..pos // split_tokens of one kv head's GROUP query heads in
    increasing order and store the normalized output."""
    rows = tl.arange(0, GROUP_PAD)
    row_mask = rows < GROUP
    head = kv_head * GROUP + rows
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    first_part = (token * num_heads + head) * num_parts
    m_run = tl.full([GROUP_PAD], NEG_INIT, tl.float32)
    l_run = tl.zeros([GROUP_PAD], tl.float32)
    acc_run = tl.zeros([GROUP_PAD, HEAD_DIM_PAD], tl.float32)
    for part in range(0, pos // split_tokens + 1):
        part_row = first_part + part
        m_i = tl.load(part_m_ptr + part_row, mask=row_mask, other=NEG_INIT)
        l_i = tl.load(part_l_ptr + part_row, mask=row_mask, other=0.0)
        acc_offs = part_row[:, None] * HEAD_DIM_PAD + offs_d[None, :]
        acc = tl.load(part_acc_ptr + acc_offs, mask=row_mask[:, None], other=0.0)
        m_run, l_run, acc_run = _merge_state(m_run, l_run, acc_run, m_i, l_i, acc)
    out = acc_run / tl.where(l_run > 0, l_run, 1.0)[:, None]
    o_offs = token * stride_ot + head[:, None] * stride_oh + offs_d[None, :]
    o_mask = row_mask[:, None] & (offs_d < HEAD_DIM)[None, :]
    tl.store(out_ptr + o_offs, out.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit(do_not_specialize=["num_seqs", "split_tokens", "num_parts"])
def _reduce_partitions_kernel(
    out_ptr,  # [num_tokens, num_heads, head_dim]
    part_acc_ptr,  # [num_tokens, num_heads, num_parts, HEAD_DIM_PAD] fp32
    part_m_ptr,  # [num_tokens, num_heads, num_parts] fp32
    part_l_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    num_seqs,
    split_tokens,
    num_parts,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per (token, kv head): fold the token's partitions 0..pos // split_tokens in order.

    The token's sequence is searched even for decode: a sequence with no new token would otherwise
    shift every later token onto the wrong sequence.
    """
    pdl_prologue(PDL)
    token = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_seq(token, query_start_loc_ptr, num_seqs, 1)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    pos = tl.load(seq_lens_ptr + seq) - q_len + (token - q_start)
    _fold_partitions(
        out_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, token.to(tl.int64), kv_head, pos, split_tokens,
        num_parts, tl.num_programs(1) * GROUP, stride_ot, stride_oh, GROUP, GROUP_PAD, HEAD_DIM, HEAD_DIM_PAD,
    )  # fmt: skip
