"""paged_attention_triton vs paged_attention_torch on the CPU interpreter, and its batch invariance.

Tolerances: fp32 runs compare fp32 against fp32 (the reference is per-sequence SDPA), so only the
summation order differs: ~1e-7 relative, bounded here by 1e-5. fp16 runs round q·k operands and the
softmax probabilities to fp16 (2**-11 relative) before fp32 accumulation while the reference works in
fp32 from the same fp16 inputs; outputs are averages of unit-scale values, so 3e-3 absolute.
"""

from __future__ import annotations

import pytest
import torch
from paged_batch import PagedBatch, make_paged_batch

from epochserve.kernels.paged_attention import paged_attention_torch
from epochserve.kernels.paged_attention_triton import (
    AttentionTiles,
    paged_attention_triton,
    plan_attention,
)

# (seq_len, new tokens): decode at length 1, a prefill crossing blocks, extend over a cached prefix,
# decode over several blocks, a short extend whose tokens cross a block boundary.
MIXED = [(1, 1), (37, 37), (70, 5), (130, 1), (34, 4)]


def run_triton(batch: PagedBatch, **kwargs: object) -> torch.Tensor:
    d = batch.query.shape[-1]
    return paged_attention_triton(
        batch.query, batch.key_cache, batch.value_cache, batch.block_tables, batch.seq_lens,
        batch.query_start_loc, d**-0.5, max_query_len=batch.max_query_len, max_seq_len=batch.max_seq_len,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


def run_reference(batch: PagedBatch) -> torch.Tensor:
    d = batch.query.shape[-1]
    seq_lens, starts = batch.reference_args()
    return paged_attention_torch(
        batch.query, batch.key_cache, batch.value_cache, batch.block_tables, seq_lens, starts, d**-0.5
    )


def sub_batch(batch: PagedBatch, seq: int) -> PagedBatch:
    """Sequence `seq` of the batch alone, over the same cache."""
    start, end = int(batch.query_start_loc[seq]), int(batch.query_start_loc[seq + 1])
    return PagedBatch(
        batch.query[start:end], batch.key_cache, batch.value_cache, batch.block_tables[seq : seq + 1],
        batch.seq_lens[seq : seq + 1], torch.tensor([0, end - start], dtype=torch.int32),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim", "block_size"),
    [(2, 2, 64, 16), (6, 2, 64, 32), (8, 1, 128, 16), (12, 4, 128, 32), (4, 2, 80, 16)],
    ids=["mha-d64-b16", "gqa3-d64-b32", "mqa8-d128-b16", "gqa3-d128-b32", "gqa2-d80-b16"],
)
@pytest.mark.parametrize("fixed_split_tokens", [None, 64], ids=["auto", "split64"])
def test_mixed_batch_matches_reference(
    num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, fixed_split_tokens: int | None
) -> None:
    batch = make_paged_batch(MIXED, num_heads, num_kv_heads, head_dim, block_size, torch.float32, seed=1)
    assert not batch.query.is_contiguous()  # q is a slice of a merged qkv tensor
    out = run_triton(batch, fixed_split_tokens=fixed_split_tokens)
    torch.testing.assert_close(out, run_reference(batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixed_split_tokens", [None, 64], ids=["auto", "split64"])
def test_decode_batch_split_schedule_matches_reference(fixed_split_tokens: int | None) -> None:
    seqs = [(300, 1), (1, 1), (129, 1), (64, 1), (65, 1)]
    batch = make_paged_batch(seqs, 8, 2, 64, 16, torch.float32, merged_qkv=False, seed=2)
    plan = plan_attention(
        batch.query.shape[0], len(seqs), 8, 2, 64, max_query_len=1, max_seq_len=300,
        fixed_split_tokens=fixed_split_tokens, num_sms=4,
    )  # fmt: skip
    assert plan.schedule == "split" and plan.num_parts >= 2
    # Poisoned destination: every element must be written.
    out = torch.full_like(batch.query, float("nan"))
    run_triton(batch, fixed_split_tokens=fixed_split_tokens, out=out)
    torch.testing.assert_close(out, run_reference(batch), atol=1e-5, rtol=1e-5)


def test_fp16_matches_reference() -> None:
    batch = make_paged_batch(MIXED, 6, 2, 64, 16, torch.float16, seed=3)
    out = run_triton(batch, fixed_split_tokens=64)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, run_reference(batch), atol=3e-3, rtol=3e-3)


def test_sequence_alone_equals_sequence_in_batch_bitwise() -> None:
    """fixed_split_tokens: a row's bits do not depend on the batch, the schedule or the chunking."""
    seqs = [(40, 40), (200, 1), (90, 7), (1, 1), (150, 1)]
    batch = make_paged_batch(seqs, 8, 2, 64, 16, torch.float32, seed=4)
    mixed = run_triton(batch, fixed_split_tokens=64)  # max_query_len > 1: loop schedule
    decodes = PagedBatch(
        batch.query[[40, 48, 49]], batch.key_cache, batch.value_cache, batch.block_tables[[1, 3, 4]],
        batch.seq_lens[[1, 3, 4]], torch.tensor([0, 1, 2, 3], dtype=torch.int32),
    )  # fmt: skip
    decode_out = run_triton(decodes, fixed_split_tokens=64)  # decode only: split schedule
    assert torch.equal(decode_out, mixed[[40, 48, 49]])
    for seq in (0, 1, 2):  # alone: single (40 ≤ 64 positions), split (decode) and loop schedules
        alone = run_triton(sub_batch(batch, seq), fixed_split_tokens=64)
        start, end = int(batch.query_start_loc[seq]), int(batch.query_start_loc[seq + 1])
        assert torch.equal(alone, mixed[start:end])
    # The last 15 prompt tokens as an extend chunk over the first 25 (cached): the one-shot
    # prefill's values, although every token sits at another row of its query tile. Not bits here:
    # the interpreter's tl.dot is numpy's matmul, whose rows' bits depend on the tile's row count on
    # some CPUs (OpenBLAS picks its microkernel by CPU; seen on AMD EPYC): only the summation order
    # differs, ~head_dim x 2^-24 relative per dot, well inside 1e-5. tests/gpu checks the bytes.
    chunk = PagedBatch(
        batch.query[25:40], batch.key_cache, batch.value_cache, batch.block_tables[:1], batch.seq_lens[:1],
        torch.tensor([0, 15], dtype=torch.int32),
    )  # fmt: skip
    torch.testing.assert_close(run_triton(chunk, fixed_split_tokens=64), mixed[25:40], atol=1e-5, rtol=1e-5)


def test_schedules_agree_bitwise() -> None:
    """The loop and split schedules fold the same partitions the same way: identical bits."""
    batch = make_paged_batch([(260, 1), (70, 1), (129, 1)], 6, 2, 64, 32, torch.float32, seed=5)
    as_loop = paged_attention_triton(
        batch.query, batch.key_cache, batch.value_cache, batch.block_tables, batch.seq_lens,
        batch.query_start_loc, 0.125, max_query_len=2, max_seq_len=batch.max_seq_len, fixed_split_tokens=64,
    )  # fmt: skip
    split = paged_attention_triton(
        batch.query, batch.key_cache, batch.value_cache, batch.block_tables, batch.seq_lens,
        batch.query_start_loc, 0.125, max_query_len=1, max_seq_len=batch.max_seq_len, fixed_split_tokens=64,
    )  # fmt: skip
    assert torch.equal(split, as_loop)


def test_tile_override_and_bad_split() -> None:
    batch = make_paged_batch([(50, 3), (20, 1)], 4, 2, 64, 16, torch.float32, seed=6)
    tiles = AttentionTiles(block_m=32, block_n=32, num_warps=4, num_stages=2)
    torch.testing.assert_close(run_triton(batch, tiles=tiles), run_reference(batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        run_triton(batch, fixed_split_tokens=100)


def test_auto_plan_splits_long_decode_but_not_prefill() -> None:
    decode = plan_attention(
        8, 8, 32, 8, 128, max_query_len=1, max_seq_len=8192, fixed_split_tokens=None, num_sms=132
    )
    assert decode.schedule == "split" and decode.split_tokens % decode.tiles.block_n == 0
    assert 8 * 8 * decode.num_parts >= 132  # enough programs for every SM
    prefill = plan_attention(
        4096, 8, 32, 8, 128, max_query_len=512, max_seq_len=8192, fixed_split_tokens=None, num_sms=132
    )
    assert prefill.schedule == "single" and prefill.tiles.block_m >= 64
    fixed = plan_attention(
        8, 8, 32, 8, 128, max_query_len=1, max_seq_len=100, fixed_split_tokens=512, num_sms=132
    )
    assert fixed.split_tokens == 512 and fixed.schedule == "single"


@pytest.mark.parametrize(("bound", "split"), [(2048, 64), (8192, 64), (131072, 512)])
def test_auto_plan_for_a_batch_1_graph_keeps_short_contexts_split(bound: int, split: int) -> None:
    """A graph plans for its length bound: partitions stay one key tile long while the bound allows
    (a short context then still spreads over several programs), at most 256 of them."""
    plan = plan_attention(
        1, 1, 32, 8, 128, max_query_len=1, max_seq_len=bound, fixed_split_tokens=None, num_sms=132
    )
    assert plan.split_tokens == split and plan.num_parts == min(256, bound // 64)


def test_sequence_without_new_tokens_is_skipped() -> None:
    """A sequence with no new token (q = 0) in a split-schedule decode batch: the others' rows must
    still fold their own partitions (the reduce searches each token's sequence)."""
    batch = make_paged_batch([(300, 1), (50, 0), (129, 1)], 8, 2, 64, 16, torch.float32, seed=8)
    out = run_triton(batch, fixed_split_tokens=64)
    without = PagedBatch(
        batch.query, batch.key_cache, batch.value_cache, batch.block_tables[[0, 2]], batch.seq_lens[[0, 2]],
        torch.tensor([0, 1, 2], dtype=torch.int32),
    )  # fmt: skip
    torch.testing.assert_close(out, run_reference(without), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixed_split_tokens", [None, 64], ids=["auto", "split64"])
def test_folded_reduce_equals_reduce_launch_bitwise(fixed_split_tokens: int | None) -> None:
    """The split schedule's last partition program folds the partitions itself (fold=True): the
    same bits as the reduce launch, every output written, and the counters back at 0 so the next
    launch (a graph replay) folds again. Contexts of one partition and a sequence without a new
    token (it takes no ticket) included."""
    from epochserve.kernels.arrival import counters_in_use

    seqs = [(300, 1), (50, 0), (1, 1), (129, 1), (64, 1), (65, 1)]
    batch = make_paged_batch(seqs, 8, 2, 64, 16, torch.float32, merged_qkv=False, seed=9)
    plan = plan_attention(
        batch.query.shape[0], len(seqs), 8, 2, 64, max_query_len=1, max_seq_len=300,
        fixed_split_tokens=fixed_split_tokens, num_sms=4,
    )  # fmt: skip
    assert plan.schedule == "split" and plan.num_parts >= 2
    reduced = run_triton(batch, fixed_split_tokens=fixed_split_tokens, fold=False)
    for _ in range(2):
        out = torch.full_like(batch.query, float("nan"))
        run_triton(batch, fixed_split_tokens=fixed_split_tokens, out=out, fold=True)
        assert torch.equal(out, reduced)
        counters = counters_in_use(batch.query.device)
        assert counters.numel() >= len(seqs) * 2 and not counters.any()


def test_fold_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from epochserve.kernels.paged_attention_triton import fold_enabled

    monkeypatch.delenv("EPOCHSERVE_ATTENTION_FOLD", raising=False)
    assert fold_enabled()  # the default
    monkeypatch.setenv("EPOCHSERVE_ATTENTION_FOLD", "0")
    assert not fold_enabled()
