"""Paged attention in Triton: one call for prefill, extend and decode (reference: paged_attention.py).

Layout and batch conventions are those of kernels/paged_attention.py. The programs live in
kernels/paged_attention_kernels.py; this module picks tile shapes, the partition length
(`split_tokens`) and the schedule, then launches:

- loop schedule: one program per (query tile, kv head) walks all partitions itself and writes the
  output. Used for prefill/extend/mixed batches, and for decode when the batch alone fills the GPU.
- split schedule ("flash-decoding"): one program per (query tile, kv head, partition) writes the
  partition's (max, sum, unnormalized output) in fp32; a second kernel folds them in order. Used for
  decode (max_query_len == 1) so that long contexts at small batch still use every SM.

The split schedule folds its reduce into its partition programs (FOLD, a counter per (sequence, kv
head) from kernels/arrival.py): the same bits, one launch fewer; W1 1.6% faster on an H100
(docs/benchmarks.md, 2026-12-07). EPOCHSERVE_ATTENTION_FOLD=0 launches the reduce instead.

Batch invariance: with `fixed_split_tokens` set, the tile shapes and the partition length are
constants, so a query row's arithmetic depends only on its own sequence (docs/kernels.md). The two
schedules are bit-identical by construction, so the choice between them (which depends on the
batch) cannot change a result either.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import torch
import triton

from epochserve.kernels import device_info
from epochserve.kernels.arrival import arrival_counters
from epochserve.kernels.paged_attention_kernels import _paged_attention_kernel, _reduce_partitions_kernel
from epochserve.kernels.pdl import pdl_enabled
from epochserve.kernels.rotary import QKNorm
from epochserve.kernels.rotary_kv_cache_triton import check_rotary_store_inputs

# Partition length the batch-invariant mode is meant to use: a decode step at 1k-32k context and
# batch ≥ 8 gives ≥ 2 partitions per (sequence, kv head); partial state is ~1.6% of the KV bytes.
BATCH_INVARIANT_SPLIT_TOKENS = 512
# Non-invariant decode: aim for this many programs per SM, with partitions of at least one key tile
# and at most _MAX_DECODE_PARTS of them for the longest sequence. Short partitions matter to short
# contexts at small batch (a CUDA graph plans for its length bound, so the actual contexts use only
# the first few partitions): at batch 1, a few hundred positions under a 2048 bound attend faster in
# 64-token partitions than in 512-token ones, where each kv head's program walks the whole context
# alone (bench/decode_kernels_microbench.py; the times are in docs/benchmarks.md, W1).
_PROGRAMS_PER_SM = 16  # many small programs: the last wave's idle SMs cost little
_MAX_DECODE_PARTS = 256  # bounds the grid and the fp32 partial states of a long length bound
# The split schedule's fp32 partial buffers may take at most this much; past it the loop schedule
# runs instead (bit-identical, only less parallel).
_MAX_PARTIAL_BYTES = 1 << 30
_LOG2E = 1.4426950408889634


def fold_enabled() -> bool:
    """Whether decode's split schedule folds its partitions in-kernel (EPOCHSERVE_ATTENTION_FOLD=0:
    no, the reduce runs as a launch of its own)."""
    return os.environ.get("EPOCHSERVE_ATTENTION_FOLD", "1") == "1"


def rotary_fold_enabled() -> bool:
    """Whether decode steps rotate and store their new keys inside the attention launch
    (EPOCHSERVE_ROTARY_ATTENTION=1; off until measured on a GPU: one launch a layer fewer)."""
    return os.environ.get("EPOCHSERVE_ROTARY_ATTENTION", "0") == "1"


@dataclass(frozen=True, slots=True)
class AttentionTiles:
    """Tile shapes of one launch. block_m rows = (block_m // group) tokens × group query heads."""

    block_m: int  # query rows per program (power of two, ≥ 16 for tl.dot)
    block_n: int  # key positions per inner step (power of two, ≥ 16)
    num_warps: int
    num_stages: int


def decode_tiles(group: int) -> AttentionTiles:
    """Small query tiles for decode (one token × group heads); also the batch-invariant tiles."""
    return AttentionTiles(
        block_m=max(16, triton.next_power_of_2(group)), block_n=64, num_warps=4, num_stages=3
    )


def prefill_tiles(group: int) -> AttentionTiles:
    """Larger query tiles for prefill and extend: more rows share each key/value tile."""
    return AttentionTiles(
        block_m=max(64, triton.next_power_of_2(group)), block_n=64, num_warps=4, num_stages=2
    )


def _auto_split_tokens(num_seqs: int, num_kv_heads: int, max_seq_len: int, block_n: int, sms: int) -> int:
    """Non-invariant decode: partition length that gives ~_PROGRAMS_PER_SM programs per SM."""
    parts = max(1, math.ceil(_PROGRAMS_PER_SM * sms / max(1, num_seqs * num_kv_heads)))
    split = max(block_n, math.ceil(max_seq_len / parts), math.ceil(max_seq_len / _MAX_DECODE_PARTS))
    return math.ceil(split / block_n) * block_n


@dataclass(frozen=True, slots=True)
class AttentionPlan:
    """How one call runs: tile shapes, partition length and schedule (see the module docstring)."""

    tiles: AttentionTiles
    split_tokens: int  # partition length in key positions, a multiple of tiles.block_n
    num_parts: int  # partitions of the longest sequence
    schedule: Literal["single", "loop", "split"]
    is_decode: bool  # ≤ 1 new token per sequence: one program row per sequence, no tile search


def plan_attention(
    num_tokens: int,
    num_seqs: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    max_query_len: int,
    max_seq_len: int,
    fixed_split_tokens: int | None,
    num_sms: int,
    tiles: AttentionTiles | None = None,
) -> AttentionPlan:
    """Pick tiles, partition length and schedule from host-side sizes only (no device sync)."""
    group = num_heads // num_kv_heads
    is_decode = max_query_len <= 1
    if tiles is None:
        tiles = decode_tiles(group) if is_decode or fixed_split_tokens is not None else prefill_tiles(group)
    if fixed_split_tokens is not None:
        if fixed_split_tokens <= 0 or fixed_split_tokens % tiles.block_n:
            raise ValueError(f"fixed_split_tokens must be a positive multiple of {tiles.block_n}")
        split = fixed_split_tokens
    elif is_decode:
        split = _auto_split_tokens(num_seqs, num_kv_heads, max_seq_len, tiles.block_n, num_sms)
    else:
        split = max(tiles.block_n, math.ceil(max_seq_len / tiles.block_n) * tiles.block_n)
    num_parts = max(1, math.ceil(max_seq_len / split))
    partial_bytes = num_tokens * num_heads * num_parts * (triton.next_power_of_2(head_dim) + 2) * 4
    schedule: Literal["single", "loop", "split"]
    if num_parts == 1:
        schedule = "single"
    elif is_decode and partial_bytes <= _MAX_PARTIAL_BYTES:
        schedule = "split"
    else:
        schedule = "loop"
    return AttentionPlan(tiles, split, num_parts, schedule, is_decode)


@dataclass(frozen=True, slots=True)
class NewTokens:
    """What rotary_store_kv_triton would take besides q (kernels/rotary_kv_cache_triton.py)."""

    key: torch.Tensor  # [num_tokens, num_kv_heads, head_dim], not yet rotated
    value: torch.Tensor
    positions: torch.Tensor  # [num_tokens] int
    cos_sin_cache: torch.Tensor  # [max_positions, head_dim] fp32
    slot_mapping: torch.Tensor  # [num_tokens] int64; negative: not stored
    qk_norm: QKNorm | None = None


def _check_inputs(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    if query.dim() != 3 or key_cache.dim() != 4 or key_cache.shape != value_cache.shape:
        raise ValueError("expected query [T, Hq, D] and caches [blocks, block_size, Hkv, D] of one shape")
    if query.shape[1] % key_cache.shape[2] or query.shape[2] != key_cache.shape[3]:
        raise ValueError(
            f"query heads/dim {tuple(query.shape[1:])} do not fit cache {tuple(key_cache.shape)}"
        )
    if key_cache.stride(-1) != 1 or value_cache.stride(-1) != 1:
        raise ValueError("key/value caches need a contiguous last (head_dim) dimension")
    if query.dtype != key_cache.dtype or query.dtype != value_cache.dtype:
        raise ValueError(f"query is {query.dtype} but the caches are {key_cache.dtype}/{value_cache.dtype}")


def paged_attention_triton(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: torch.Tensor,  # [num_seqs] int32, context length including the new tokens
    query_start_loc: torch.Tensor,  # [num_seqs + 1] int32
    scale: float,
    *,
    max_query_len: int,
    max_seq_len: int,
    fixed_split_tokens: int | None = None,
    tiles: AttentionTiles | None = None,
    out: torch.Tensor | None = None,
    fold: bool | None = None,
    new: NewTokens | None = None,
) -> torch.Tensor:
    """Causal GQA attention of each sequence's new tokens over its paged context; [T, Hq, D].

    max_query_len / max_seq_len: host-side upper bounds of the batch (no device sync); under a CUDA
    graph pass the bounds the graph was captured for. fixed_split_tokens: None lets the partition
    length follow the batch (fast, not batch-invariant); an int (multiple of the tiles' block_n,
    e.g. BATCH_INVARIANT_SPLIT_TOKENS) fixes it and the tiles, making each row's result independent
    of the batch. tiles: override the tile shapes (benchmarks; breaks invariance if it varies).
    out: optional [T, Hq, D] destination (e.g. a CUDA-graph static buffer). fold: the split
    schedule folds its partitions in-kernel (None: EPOCHSERVE_ATTENTION_FOLD); same bits either way.
    new (decode only): the query is not yet rotated, and the new tokens' keys and values are not yet
    in the cache; this launch does rotary_store_kv_triton's work too, with its results (the rotated
    keys and the values in their slots) and the same attention output, to the bit without a q/k norm.
    """
    _check_inputs(query, key_cache, value_cache)
    if new is not None:
        _check_new_tokens(query, new, key_cache, value_cache, max_query_len)
    if query.stride(-1) != 1:
        query = query.contiguous()
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    elif out.shape != query.shape or out.stride(-1) != 1:
        raise ValueError("out must have the query's shape and a contiguous last dimension")
    num_tokens, num_heads, head_dim = query.shape
    num_seqs, num_kv_heads = seq_lens.shape[0], key_cache.shape[2]
    plan = plan_attention(
        num_tokens, num_seqs, num_heads, num_kv_heads, head_dim,
        max_query_len=max_query_len, max_seq_len=max_seq_len, fixed_split_tokens=fixed_split_tokens,
        num_sms=device_info.num_sms(query.device), tiles=tiles,
    )  # fmt: skip
    if num_tokens:
        counters = None
        if plan.schedule == "split" and (fold_enabled() if fold is None else fold):
            counters = arrival_counters(query.device, num_seqs * num_kv_heads)
        _launch(
            query, key_cache, value_cache, block_tables, seq_lens, query_start_loc, scale, plan, out,
            counters, new,
        )  # fmt: skip
    return out


def _check_new_tokens(
    query: torch.Tensor,
    new: NewTokens,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    max_query_len: int,
) -> None:
    if max_query_len > 1:
        raise ValueError("new tokens are rotated and stored in the attention launch at decode only")
    check_rotary_store_inputs(query, new.key, new.value, key_cache, value_cache, new.qk_norm)
    # One launch reads the values too, and each kv head's new key and value go to its own cache row.
    if new.value.dtype != key_cache.dtype:
        raise ValueError(f"key/value are {new.key.dtype}/{new.value.dtype}, the caches {key_cache.dtype}")
    if new.key.shape[1:] != key_cache.shape[2:] or new.value.shape != new.key.shape:
        raise ValueError(f"key/value {tuple(new.key.shape)} do not fit cache {tuple(key_cache.shape)}")


def _launch(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    plan: AttentionPlan,
    out: torch.Tensor,
    counters: torch.Tensor | None,  # given: the split schedule folds in-kernel (FOLD)
    new: NewTokens | None = None,  # given (decode): rotate and store them in the same launch (ROTARY)
) -> None:
    num_tokens, num_heads, head_dim = query.shape
    num_seqs, num_kv_heads = seq_lens.shape[0], key_cache.shape[2]
    group, tiles, split = num_heads // num_kv_heads, plan.tiles, plan.schedule == "split"
    head_dim_pad = triton.next_power_of_2(head_dim)
    block_q = tiles.block_m // group
    num_rows = num_seqs if plan.is_decode else num_tokens // block_q + num_seqs
    grid = (num_rows, num_kv_heads, plan.num_parts if split else 1)
    parts_shape = (num_tokens, num_heads, plan.num_parts) if split else (1, 1, 1)
    part_m = torch.empty(parts_shape, dtype=torch.float32, device=query.device)
    part_l = torch.empty(parts_shape, dtype=torch.float32, device=query.device)
    part_acc = torch.empty((*parts_shape, head_dim_pad), dtype=torch.float32, device=query.device)
    pdl = pdl_enabled(query.device)
    if new is not None:
        assert plan.is_decode, "the rotary fold is for decode launches"
        norm = new.qk_norm
        norms = (norm.q_weight, norm.k_weight, norm.eps) if norm is not None else (query, query, 0.0)
        rotary = (new.key, new.value, new.positions, new.slot_mapping, new.cos_sin_cache, *norms)
        rotary_strides = (*new.key.stride()[:2], *new.value.stride()[:2], new.cos_sin_cache.stride(0))
    else:  # unused pointers and strides
        rotary, rotary_strides = (query, query, seq_lens, seq_lens, query, query, query, 0.0), (0,) * 5
    _paged_attention_kernel[grid](
        out, part_acc, part_m, part_l, query, key_cache, value_cache,
        block_tables, seq_lens, query_start_loc, counters if counters is not None else seq_lens,
        *rotary, scale * _LOG2E, num_seqs, plan.split_tokens, plan.num_parts,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        value_cache.stride(0), value_cache.stride(1), value_cache.stride(2),
        block_tables.stride(0), *rotary_strides,
        GROUP=group, HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad,
        BLOCK_M=tiles.block_m, BLOCK_Q=block_q, BLOCK_N=tiles.block_n, PAGE_SIZE=key_cache.shape[1],
        SCHEDULE=plan.schedule, DECODE=plan.is_decode,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32", PDL=pdl,
        FOLD=counters is not None, GROUP_PAD=triton.next_power_of_2(group),
        ROTARY=new is not None, HAS_NORM=new is not None and new.qk_norm is not None,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages, launch_pdl=pdl,
    )  # fmt: skip
    if split and counters is None:
        _reduce_partitions_kernel[(num_tokens, num_kv_heads)](
            out, part_acc, part_m, part_l, seq_lens, query_start_loc,
            num_seqs, plan.split_tokens, plan.num_parts, out.stride(0), out.stride(1),
            GROUP=group, GROUP_PAD=triton.next_power_of_2(group),
            HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, PDL=pdl, num_warps=4, launch_pdl=pdl,
        )  # fmt: skip
