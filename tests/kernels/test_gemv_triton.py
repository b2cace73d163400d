"""gemv_triton vs F.linear, and silu_and_mul_gemv_triton vs silu_and_mul_linear_torch
(kernels/activation.py): products of a few rows, the second with the activation in its prologue.

Tolerances: fp32 uses IEEE dots, so only the order of the K-long sums differs from the reference
(relative 1e-5 at K ≈ 1.5k); fp16 rounds the activation where the reference does and accumulates in
fp32, then rounds once: a few ulps of the output (2e-3 relative, against an fp32 product of the same
fp16 activation).
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.activation import silu_and_mul_linear_torch, silu_and_mul_torch
from epochserve.kernels.gemv_triton import MAX_ROWS, GemvTiles, gemv_triton, silu_and_mul_gemv_triton


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS])
@pytest.mark.parametrize(
    ("n", "k"), [(96, 1500), (70, 256), (33, 17)], ids=["crosses-k-tiles", "exact", "odd"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matches_reference(rows: int, n: int, k: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(rows * n + k)
    wide = (torch.randn(rows, 2 * k + 8, generator=gen) * 2).to(dtype)
    gate_up = wide[:, : 2 * k]  # strided rows, as a slice of a wider buffer
    weight = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    out = silu_and_mul_gemv_triton(gate_up, weight, tiles=GemvTiles(32, 128, 4, 2))
    assert out.shape == (rows, n) and out.dtype == dtype
    if dtype == torch.float32:
        assert rel_err(out, silu_and_mul_linear_torch(gate_up, weight)) < 1e-5
    else:  # the reference's fp16 product on the CPU: fp32 math on the same rounded activation
        act = silu_and_mul_torch(gate_up.float()).to(dtype)
        assert rel_err(out, act.float() @ weight.float().T) < 2e-3


def test_a_row_does_not_depend_on_the_others() -> None:
    gen = torch.Generator().manual_seed(3)
    gate_up, weight = torch.randn(3, 2 * 300, generator=gen), torch.randn(40, 300, generator=gen)
    together = silu_and_mul_gemv_triton(gate_up, weight)
    alone = silu_and_mul_gemv_triton(gate_up[2:3].clone(), weight)
    assert torch.equal(together[2:3], alone)  # row 2 of 3 (padded to 4) vs alone (1)


def test_refuses_too_many_rows_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="rows"):
        silu_and_mul_gemv_triton(torch.zeros(MAX_ROWS + 1, 8), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="expected"):
        silu_and_mul_gemv_triton(torch.zeros(2, 8), torch.zeros(4, 5))


@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_plain_gemv_matches_linear(rows: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 700, generator=gen).to(dtype)
    weight = (torch.randn(45, 700, generator=gen) / 700**0.5).to(dtype)
    out = gemv_triton(x, weight, tiles=GemvTiles(16, 256, 4, 2))
    assert out.shape == (rows, 45) and out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    assert rel_err(out, x.double() @ weight.double().T) < tol


def test_fp32_out_keeps_the_sums_unrounded() -> None:
    """out_dtype=float32 (TritonOps.linear_fp32 at one row: the MoE router): the fp32 sums of the
    fp16 products, as an fp32 product of the same fp16 numbers gives them; the fp16 output would be
    off by its rounding (~5e-4 relative)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 512, generator=gen).half()
    weight = (torch.randn(128, 512, generator=gen) / 512**0.5).half()
    out = gemv_triton(x, weight, out_dtype=torch.float32)
    exact = x.double() @ weight.double().T
    assert out.dtype == torch.float32 and rel_err(out, exact) < 1e-6
    assert rel_err(gemv_triton(x, weight), exact) > 1e-5


def test_triton_ops_take_it_for_a_small_fp32_out_product_only() -> None:
    from epochserve.worker.layers.ops import TritonOps

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 256, generator=gen).half()
    router = (torch.randn(64, 256, generator=gen) / 16).half()
    assert torch.equal(TritonOps().linear_fp32(x, router), gemv_triton(x, router, out_dtype=torch.float32))
    two_rows = torch.randn(2, 256, generator=gen).half()
    got = TritonOps().linear_fp32(two_rows, router)
    assert got.dtype == torch.float32 and rel_err(got, two_rows.double() @ router.double().T) < 1e-6
