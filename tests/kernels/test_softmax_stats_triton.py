"""softmax_stats_triton vs softmax_stats_torch (kernels/softmax_stats.py) through the interpreter.

argmax and finiteness must be equal. logsumexp differs from torch's only in the order of the sum's
terms (chunked, then combined with rescaling) and exp/log's last bits: 1e-5 relative for O(10)
logits over a few thousand tokens.
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.softmax_stats import softmax_stats_torch
from epochserve.kernels.softmax_stats_triton import CHUNK, softmax_stats_triton


def check(logits: torch.Tensor) -> None:
    argmax, lse, finite = softmax_stats_triton(logits)
    ref_argmax, ref_lse, ref_finite = softmax_stats_torch(logits)
    assert torch.equal(finite, ref_finite)
    assert torch.equal(argmax[ref_finite], ref_argmax[ref_finite])
    torch.testing.assert_close(lse[ref_finite], ref_lse[ref_finite], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("vocab", [1, 100, CHUNK, CHUNK + 1, 3 * CHUNK - 7])
def test_matches_reference_across_chunk_boundaries(vocab: int) -> None:
    gen = torch.Generator().manual_seed(vocab)
    check(torch.randn(5, vocab, generator=gen) * 4)


def test_single_row_and_strided_rows() -> None:
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(6, 2 * CHUNK + 300, generator=gen) * 3
    check(table[:1])
    check(table[::2, : CHUNK + 150])  # every other row of a wider table: row stride != vocab


def test_first_index_wins_a_tie_even_across_chunks() -> None:
    logits = torch.zeros(2, 2 * CHUNK + 10)
    logits[0, [CHUNK + 3, 5, 2 * CHUNK + 1]] = 7.0
    logits[1, [2 * CHUNK + 9, CHUNK]] = 2.0
    argmax, _, _ = softmax_stats_triton(logits)
    assert argmax.tolist() == [5, CHUNK]


def test_filtered_tokens_and_empty_chunks() -> None:
    """-inf entries (tokens a filter removed) are probability 0, whole chunks of them included."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 3 * CHUNK, generator=gen)
    logits[0, :CHUNK] = float("-inf")  # a chunk with nothing left
    logits[1, 1:] = float("-inf")  # one token left: logprob 0
    logits[2, CHUNK:] = float("-inf")
    check(logits)
    argmax, lse, _ = softmax_stats_triton(logits)
    assert argmax[1] == 0 and lse[1] == logits[1, 0]


def test_non_finite_rows_are_flagged_alone() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, CHUNK + 20, generator=gen)
    logits[1, CHUNK + 2] = float("nan")
    logits[2, 7] = float("inf")
    _, _, finite = softmax_stats_triton(logits)
    assert finite.tolist() == [True, False, False, True]
    check(logits)


def test_rows_are_batch_invariant() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(9, 2 * CHUNK + 5, generator=gen) * 5
    full = softmax_stats_triton(logits)
    for start in (0, 4, 8):
        alone = softmax_stats_triton(logits[start : start + 1])
        assert all(torch.equal(a, f[start : start + 1]) for a, f in zip(alone, full, strict=True))
