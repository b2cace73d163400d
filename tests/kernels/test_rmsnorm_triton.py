"""rms_norm_triton / add_rms_norm_triton vs the Hugging Face-order references in kernels/rmsnorm.py.

Tolerances: fp32 differs from the reference only in the variance's summation order and rsqrt's last
bit: 1e-5. fp16 rounds the normalized value to fp16 before the weight multiply, like the reference;
an ulp flip there is 2**-10 relative, so 2e-3. The residual sum is one rounding in both: exact.
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.rmsnorm import add_rms_norm_torch, rms_norm_torch
from epochserve.kernels.rmsnorm_triton import add_rms_norm_triton, rms_norm_triton

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden", [96, 200, 1024])
def test_rms_norm_matches_reference(dtype: torch.dtype, hidden: int) -> None:
    gen = torch.Generator().manual_seed(hidden)
    x = (torch.randn(7, hidden, generator=gen) * 3).to(dtype)
    weight = torch.randn(hidden, generator=gen).to(dtype)
    out = rms_norm_triton(x, weight, 1e-6)
    assert out.dtype == dtype
    torch.testing.assert_close(out, rms_norm_torch(x, weight, 1e-6), atol=TOL[dtype], rtol=TOL[dtype])


def test_rms_norm_strided_heads_and_promoted_weight() -> None:
    """q_norm of Qwen3: rows are the heads of a q slice of the merged qkv output."""
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(5, (4 + 2 + 2) * 64, generator=gen).half()
    q = qkv[:, : 4 * 64].view(5, 4, 64)
    weight = torch.randn(64, generator=gen)  # fp32 weight: the result promotes to fp32 as in torch
    out = rms_norm_triton(q, weight, 1e-6)
    ref = rms_norm_torch(q, weight, 1e-6)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_rms_norm_matches_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, 160, generator=gen).to(dtype)
    residual = (torch.randn(9, 3, 160, generator=gen) * 4).to(dtype)
    weight = torch.randn(160, generator=gen).to(dtype)
    normed, summed = add_rms_norm_triton(x, residual, weight, 1e-5)
    ref_normed, ref_summed = add_rms_norm_torch(x, residual, weight, 1e-5)
    assert torch.equal(summed, ref_summed)
    torch.testing.assert_close(normed, ref_normed, atol=TOL[dtype], rtol=TOL[dtype])


def test_rows_are_batch_invariant() -> None:
    gen = torch.Generator().manual_seed(2)
    x, weight = torch.randn(33, 256, generator=gen), torch.randn(256, generator=gen)
    full = rms_norm_triton(x, weight, 1e-6)
    for rows in (1, 5, 17):
        assert torch.equal(rms_norm_triton(x[-rows:], weight, 1e-6), full[-rows:])
