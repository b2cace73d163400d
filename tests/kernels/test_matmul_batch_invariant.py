"""matmul_batch_invariant vs F.linear in fp64, and its rows' independence from the row count.

Tolerances: fp32 operands with fp32 accumulation over K ≤ 300 terms: ~1e-6 relative to fp64, bounded
by 1e-5. fp16 operands are exact products accumulated in fp32, one rounding at the end: 1e-3.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from epochserve.kernels.matmul_batch_invariant import (
    PREFILL_MIN_ROWS,
    MatmulTiles,
    matmul_batch_invariant,
    matmul_tiles,
)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float16, 1e-3)])
@pytest.mark.parametrize(("n", "k", "bias"), [(100, 200, True), (64, 256, False), (130, 70, True)])
def test_matches_linear(dtype: torch.dtype, tol: float, n: int, k: int, bias: bool) -> None:
    gen = torch.Generator().manual_seed(n + k)
    x = torch.randn(70, k, generator=gen).to(dtype)
    weight = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    out = matmul_batch_invariant(x, weight, b)
    ref = F.linear(x.double(), weight.double(), b.double() if b is not None else None)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rows_are_bit_identical_for_any_row_count(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 200, generator=gen).to(dtype)
    weight = torch.randn(100, 200, generator=gen).to(dtype)
    bias = torch.randn(100, generator=gen).to(dtype)
    full = matmul_batch_invariant(x, weight, bias)
    for rows in (1, 3, 17, 64):
        assert torch.equal(matmul_batch_invariant(x[:rows], weight, bias), full[:rows])
    # A row keeps its bits wherever it sits in the batch (here: last of 17 vs alone).
    assert torch.equal(matmul_batch_invariant(x[16:17], weight, bias), full[16:17])


def test_tile_table_ignores_rows_and_rejects_bad_shapes() -> None:
    assert matmul_tiles(4096, 4096, torch.bfloat16) != matmul_tiles(28672, 4096, torch.bfloat16)
    with pytest.raises(ValueError):
        matmul_batch_invariant(torch.randn(3, 8), torch.randn(4, 9))


def test_fp32_out_from_16_bit_operands_is_the_unrounded_accumulator() -> None:
    """The lm_head's path: 16-bit table and hidden state, fp32 logits. Products of 16-bit values
    are exact in fp32, so against fp64 only the fp32 sums round (1e-5, as for fp32 operands), far
    inside the 1e-3 of a 16-bit output."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 200, generator=gen).to(torch.float16)
    weight = (torch.randn(130, 200, generator=gen) / 200**0.5).to(torch.float16)
    out = matmul_batch_invariant(x, weight, out_dtype=torch.float32)
    assert out.dtype == torch.float32
    ref = F.linear(x.double(), weight.double())
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    assert (matmul_batch_invariant(x, weight).double() - ref).abs().max() > 1e-5  # fp16 out rounds


@pytest.mark.parametrize("bias", [True, False])
def test_tma_kernel_is_the_pointer_kernel(bias: bool) -> None:
    """Prefill tiles run persistent programs fed by tensor descriptors (_matmul_tma_kernel): same
    tiles, K order and result as the pointer-load kernel, here with ragged M, N and K tails and
    more tiles than programs."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(70, 96, generator=gen).half()
    weight = (torch.randn(200, 96, generator=gen) / 96**0.5).half()
    b = torch.randn(200, generator=gen).half() if bias else None
    tiles = MatmulTiles(block_m=32, block_n=64, block_k=32, group_m=2, num_warps=4, num_stages=2)
    pointer = matmul_batch_invariant(x, weight, b, tiles=tiles)
    tma = matmul_batch_invariant(x, weight, b, tiles=replace(tiles, tma=True))
    assert torch.equal(tma, pointer)
    ref = F.linear(x.double(), weight.double(), b.double() if b is not None else None)
    torch.testing.assert_close(tma.double(), ref, atol=1e-3, rtol=1e-3)


def test_prefill_rows_take_the_tma_tiles_and_keep_their_bits() -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(PREFILL_MIN_ROWS + 6, 40, generator=gen).half()
    weight = (torch.randn(72, 40, generator=gen) / 40**0.5).half()
    assert matmul_tiles(72, 40, torch.float16, x.shape[0]).tma
    full = matmul_batch_invariant(x, weight)
    assert torch.equal(matmul_batch_invariant(x[-5:], weight), full[-5:])  # decode tiles, same bits
