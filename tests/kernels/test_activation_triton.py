"""silu_and_mul_triton vs silu_and_mul_torch (kernels/activation.py).

Tolerances: fp32 differs only in exp's last bits (1e-6); fp16 rounds silu to fp16 before the multiply
like the reference, so at most an ulp flip of either rounding: 2e-3.
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.activation import silu_and_mul_torch
from epochserve.kernels.activation_triton import silu_and_mul_triton


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-6), (torch.float16, 2e-3)])
@pytest.mark.parametrize("intermediate", [96, 1500])  # 1500 crosses the 1024-wide column block
def test_matches_reference(dtype: torch.dtype, tol: float, intermediate: int) -> None:
    gen = torch.Generator().manual_seed(intermediate)
    wide = (torch.randn(5, 2 * intermediate + 8, generator=gen) * 4).to(dtype)
    gate_up = wide[:, : 2 * intermediate]  # strided rows
    out = silu_and_mul_triton(gate_up)
    assert out.shape == (5, intermediate) and out.dtype == dtype
    torch.testing.assert_close(out, silu_and_mul_torch(gate_up), atol=tol, rtol=tol)
