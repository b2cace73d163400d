"""gemv_triton (batch-1 decode projections) vs F.linear in fp64, through the Triton interpreter.

Shapes cross the tile edges (N not a multiple of BLOCK_N, K not a multiple of BLOCK_K or of the
split) and cover every split-K count. Tolerances: fp32 operands summed in fp32 over K <= 1000
terms: ~1e-6 relative to fp64, bounded by 1e-5; fp16 operands: exact products summed in fp32, one
rounding to fp16 at the end: 1e-3 (fp32 out: 1e-5).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from epochserve.kernels.gemv_triton import GemvTiles, gemv_triton

CASES = [(torch.float32, None, 1e-5), (torch.float16, None, 1e-3), (torch.float16, torch.float32, 1e-5)]


@pytest.mark.parametrize("split_k", [1, 2, 3])
@pytest.mark.parametrize(("n", "k"), [(37, 1000), (16, 256), (100, 70)])
@pytest.mark.parametrize(("dtype", "out_dtype", "tol"), CASES)
def test_matches_linear(split_k, n, k, dtype, out_dtype, tol):
    gen = torch.Generator().manual_seed(n * k + split_k)
    x = torch.randn(1, k, generator=gen).to(dtype)
    weight = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    tiles = GemvTiles(block_n=16, block_k=64, split_k=split_k, num_warps=4)
    out = gemv_triton(x, weight, out_dtype=out_dtype, tiles=tiles)
    assert out.shape == (1, n) and out.dtype == (out_dtype or dtype)
    torch.testing.assert_close(out.double(), F.linear(x.double(), weight.double()), atol=tol, rtol=tol)


def test_non_contiguous_rows_of_the_weight_and_bad_shapes():
    weight = torch.randn(40, 96)[::2]  # every other row: stride 192, last dim contiguous
    x = torch.randn(1, 96)
    torch.testing.assert_close(gemv_triton(x, weight), F.linear(x, weight), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="gemv takes x"):
        gemv_triton(torch.randn(2, 96), weight)
