"""checksum_sums_triton (kernels/checksum_triton.py) vs its reference, piece_checksum_torch
(worker/weights/checksum.py), bit for bit: every element width, sizes that end mid-block and
mid-program, a non-zero first index, and sums that wrap past 2^64."""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.checksum_triton import checksum_sums_triton
from epochserve.worker.weights.checksum import Checksum, piece_checksum_torch


def _triton_checksum(values: torch.Tensor, first_index: int) -> Checksum:
    a, b = checksum_sums_triton(values, first_index).tolist()
    return Checksum(a & (1 << 64) - 1, b & (1 << 64) - 1)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.int64])
@pytest.mark.parametrize(("numel", "first_index"), [(1, 0), (1000, 7), (16 * 1024 + 3, 123_456_789_012)])
def test_matches_reference(dtype: torch.dtype, numel: int, first_index: int) -> None:
    gen = torch.Generator().manual_seed(numel)
    if dtype in (torch.uint8, torch.int64):
        # int64 words with the top bit set make Σ (i+1)·u wrap many times over
        values = torch.randint(-(2**62), 2**62, (numel,), generator=gen, dtype=torch.int64) * 3
        values = values.to(torch.uint8) if dtype == torch.uint8 else values
    else:
        values = (torch.randn(numel, generator=gen) * 100).to(dtype)  # negatives: the sign bit is set
    assert _triton_checksum(values, first_index) == piece_checksum_torch(values, first_index)


def test_non_contiguous_rows_are_read_in_row_major_order() -> None:
    matrix = torch.randn(64, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    columns = matrix[:, 8:40]  # strided
    assert _triton_checksum(columns, 5) == piece_checksum_torch(columns.contiguous(), 5)


def test_pieces_sum_to_the_whole_and_a_swap_changes_it() -> None:
    values = torch.randn(5000, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    whole = _triton_checksum(values, 0)
    assert _triton_checksum(values[:1234], 0) + _triton_checksum(values[1234:], 1234) == whole
    swapped = values.clone()
    swapped[[10, 11]] = values[[11, 10]]
    assert _triton_checksum(swapped, 0).a == whole.a  # same multiset of words
    assert _triton_checksum(swapped, 0) != whole  # B sees the move
