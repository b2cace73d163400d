"""add_rms_norm_gemv_triton vs the unfused references: add_rms_norm_torch (or rms_norm_torch), then
the product of the normalized row.

Tolerances: the residual sum is one rounding in both paths (exact). The normalized row differs from
the reference only in the variance's summation order and rsqrt's last bit (fp32: 1e-5); in fp16 that
can flip the rounding of a normalized element by an ulp (2**-11 relative), hence 2e-3, as
test_rmsnorm_triton. The product is then checked against the fp64 product of the kernel's own
normalized row (only the K-long sum's order differs: 1e-5 in fp32; fp16 rounds the output once:
2e-3) and against the reference's normalized row (the same bounds).
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.gemv_triton import MAX_ROWS, SHORT_ROW, GemvTiles
from epochserve.kernels.rmsnorm import add_rms_norm_torch, rms_norm_torch
from epochserve.kernels.rmsnorm_gemv_triton import add_rms_norm_gemv_triton, add_rms_norm_route_triton

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
EPS = 1e-6


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS])
@pytest.mark.parametrize(("n", "k"), [(70, 256), (33, 200)], ids=["pow2-row", "odd-row"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_residual", [True, False], ids=["add-norm", "norm"])
def test_matches_the_unfused_reference(
    rows: int, n: int, k: int, dtype: torch.dtype, with_residual: bool
) -> None:
    gen = torch.Generator().manual_seed(rows * n + k)
    wide = (torch.randn(rows, k + 8, generator=gen) * 3).to(dtype)
    x = wide[:, :k]  # strided rows, as a slice of a wider buffer
    residual = (torch.randn(rows, k, generator=gen) * 3).to(dtype) if with_residual else None
    norm_weight = (1 + 0.1 * torch.randn(k, generator=gen)).to(dtype)
    weight = (torch.randn(n, k, generator=gen) / k**0.5).to(dtype)
    tiles = GemvTiles(block_n=16, block_k=0, num_warps=4, num_stages=1)  # several programs over N
    out, summed, normed = add_rms_norm_gemv_triton(
        x, residual, norm_weight, EPS, weight, store_normed=True, tiles=tiles
    )
    if residual is not None:
        ref_normed, ref_summed = add_rms_norm_torch(x, residual, norm_weight, EPS)
    else:
        ref_normed, ref_summed = rms_norm_torch(x, norm_weight, EPS), x
    assert out.shape == (rows, n) and out.dtype == dtype and normed is not None
    assert torch.equal(summed, ref_summed)
    torch.testing.assert_close(normed, ref_normed, atol=TOL[dtype], rtol=TOL[dtype])
    assert rel_err(out, normed.double() @ weight.double().T) < TOL[dtype]
    assert rel_err(out, ref_normed.double() @ weight.double().T) < TOL[dtype]


def test_fp32_out_keeps_the_sums_unrounded() -> None:
    """The MoE router's product: 16-bit operands, fp32 logits."""
    gen = torch.Generator().manual_seed(1)
    x, residual = torch.randn(1, 128, generator=gen).half(), torch.randn(1, 128, generator=gen).half()
    norm_weight, weight = torch.rand(128, generator=gen).half(), torch.randn(24, 128, generator=gen).half()
    out, _, normed = add_rms_norm_gemv_triton(
        x, residual, norm_weight, EPS, weight, out_dtype=torch.float32, store_normed=True
    )
    assert out.dtype == torch.float32 and normed is not None
    # Exact products of fp16 values summed in fp32 vs fp64: the sum's order only.
    assert rel_err(out, normed.double() @ weight.double().T) < 1e-6


def test_a_row_does_not_depend_on_the_others() -> None:
    gen = torch.Generator().manual_seed(3)
    x, residual = torch.randn(3, 300, generator=gen), torch.randn(3, 300, generator=gen)
    norm_weight, weight = torch.rand(300, generator=gen), torch.randn(40, 300, generator=gen)
    together = add_rms_norm_gemv_triton(x, residual, norm_weight, EPS, weight)[0]
    alone = add_rms_norm_gemv_triton(x[2:3].clone(), residual[2:3].clone(), norm_weight, EPS, weight)[0]
    assert torch.equal(together[2:3], alone)  # row 2 of 3 (padded to 4) vs alone (1)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("with_residual", [True, False], ids=["add-norm", "norm"])
def test_the_router_product_routes_as_the_top_k_launch(
    rows: int, renormalize: bool, with_residual: bool
) -> None:
    """add_rms_norm_route_triton: the last program to store its logits takes the top-k, so the
    choice is topk_route_triton's on the router product's logits (bits here; on a GPU the weights
    agree to fp32 rounding, tests/gpu); the residual stream and
    the normalized row are the unrouted kernel's; the counter is back at 0. 60 experts over several
    programs (the fold must see every program's logits), top 6."""
    from epochserve.kernels.arrival import counters_in_use
    from epochserve.kernels.moe_topk_triton import topk_route_triton

    gen = torch.Generator().manual_seed(11 + rows)
    x, residual = torch.randn(rows, 96, generator=gen).half(), torch.randn(rows, 96, generator=gen).half()
    residual = residual if with_residual else None
    norm_weight, gate = torch.rand(96, generator=gen).half(), torch.randn(60, 96, generator=gen).half()
    tiles = GemvTiles(block_n=4, block_k=0, num_warps=4, num_stages=1)  # 15 programs
    for _ in range(2):
        routed = add_rms_norm_route_triton(x, residual, norm_weight, EPS, gate, 6, renormalize, tiles=tiles)
        assert routed is not None
        weights, ids, summed, normed = routed
        logits, want_summed, want_normed = add_rms_norm_gemv_triton(
            x, residual, norm_weight, EPS, gate, out_dtype=torch.float32, store_normed=True, tiles=tiles
        )
        want_weights, want_ids = topk_route_triton(logits, 6, renormalize)
        assert torch.equal(ids, want_ids) and torch.equal(weights, want_weights)
        assert torch.equal(summed, want_summed) and torch.equal(normed, want_normed)
        assert not counters_in_use(x.device).any()
    with pytest.raises(ValueError, match="top_k"):
        add_rms_norm_route_triton(x, residual, norm_weight, EPS, gate, 61, renormalize)


def test_shapes_it_does_not_take_are_refused() -> None:
    weight, norm_weight = torch.zeros(8, 64), torch.ones(64)
    with pytest.raises(ValueError, match="expected x"):
        add_rms_norm_gemv_triton(torch.zeros(MAX_ROWS + 1, 64), None, norm_weight, EPS, weight)
    with pytest.raises(ValueError, match="expected x"):
        long = SHORT_ROW + 64
        add_rms_norm_gemv_triton(torch.zeros(1, long), None, torch.ones(long), EPS, torch.zeros(8, long))
    with pytest.raises(ValueError, match="residual"):
        add_rms_norm_gemv_triton(torch.zeros(1, 64), torch.zeros(2, 64), norm_weight, EPS, weight)
    with pytest.raises(ValueError, match="dtype"):
        add_rms_norm_gemv_triton(torch.zeros(1, 64), None, norm_weight.half(), EPS, weight)


def test_triton_ops_fold_the_norm_only_where_asked_and_the_kernel_takes_it() -> None:
    """TritonOps.norm_then_linear: with norm_into_gemv, one 16-bit row without a bias goes through
    the fused kernel (its bytes); a bias, two rows or the option off take the two-step path."""
    from epochserve.worker.layers.ops import TorchOps, TritonOps

    gen = torch.Generator().manual_seed(5)
    x, residual = torch.randn(2, 96, generator=gen).half(), torch.randn(2, 96, generator=gen).half()
    norm_weight, weight = torch.rand(96, generator=gen).half(), torch.randn(40, 96, generator=gen).half()
    bias = torch.randn(40, generator=gen).half()
    fused, plain = TritonOps(norm_into_gemv=True), TritonOps()
    out, summed, normed = fused.norm_then_linear(x[:1], residual[:1], norm_weight, EPS, weight)
    kernel = add_rms_norm_gemv_triton(x[:1], residual[:1], norm_weight, EPS, weight, store_normed=True)
    assert torch.equal(out, kernel[0]) and torch.equal(summed, kernel[1]) and torch.equal(normed, kernel[2])
    for ops, args in (
        (fused, (x, residual, None)),
        (fused, (x[:1], residual[:1], bias)),
        (plain, (x[:1], residual[:1], None)),
    ):
        rows, res, b = args
        got = ops.norm_then_linear(rows, res, norm_weight, EPS, weight, b)
        two_step = TorchOps.norm_then_linear(ops, rows, res, norm_weight, EPS, weight, b)
        assert all(torch.equal(a, e) for a, e in zip(got, two_step, strict=True))
    # The router's fp32 logits, first layer (no residual: x is the stream).
    logits, stream, _ = fused.norm_then_linear(x[:1], None, norm_weight, EPS, weight, fp32_out=True)
    assert logits.dtype == torch.float32 and torch.equal(stream, x[:1])


def test_triton_ops_route_in_the_router_product_only_where_the_norm_folds() -> None:
    """TritonOps.norm_then_route: with norm_into_gemv, one 16-bit row routes inside the router's
    product (add_rms_norm_route_triton); two rows or the option off take the router product and the
    top-k launch. Either way the choice is the top-k kernel's on the same logits (bits in the
    interpreter)."""
    from epochserve.worker.layers.ops import TorchOps, TritonOps

    gen = torch.Generator().manual_seed(7)
    x, residual = torch.randn(2, 96, generator=gen).half(), torch.randn(2, 96, generator=gen).half()
    norm_weight, gate = torch.rand(96, generator=gen).half(), torch.randn(40, 96, generator=gen).half()
    fused = TritonOps(norm_into_gemv=True)
    got = fused.norm_then_route(x[:1], residual[:1], norm_weight, EPS, gate, 4, True)
    kernel = add_rms_norm_route_triton(x[:1], residual[:1], norm_weight, EPS, gate, 4, True)
    assert kernel is not None and all(torch.equal(a, e) for a, e in zip(got, kernel, strict=True))
    for ops, rows, res in ((fused, x, residual), (fused, x[:1], None), (TritonOps(), x[:1], residual[:1])):
        got = ops.norm_then_route(rows, res, norm_weight, EPS, gate, 4, False)
        two_step = TorchOps.norm_then_route(ops, rows, res, norm_weight, EPS, gate, 4, False)
        assert all(torch.equal(a, e) for a, e in zip(got, two_step, strict=True))
