"""apply_rotary_triton / apply_rotary_qk_triton vs apply_rotary_torch (kernels/rotary.py).

Tolerances: the kernel rounds each product to x's dtype before the add, as the reference's separate
ops do, so fp16 matches up to one ulp (2**-10 relative) where a backend fuses differently; fp32 to
1e-6 (an fma instead of mul+sub moves the last bit).
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.rotary import apply_rotary_torch, rope_cos_sin_cache, rope_inv_freq
from epochserve.kernels.rotary_triton import apply_rotary_qk_triton, apply_rotary_triton

TOL = {torch.float32: 1e-6, torch.float16: 1e-3}


def qk_views(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype):
    """q and k as strided views into one merged qkv tensor (how the model produces them)."""
    gen = torch.Generator().manual_seed(num_tokens * head_dim)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen).to(dtype)
    q = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(
        num_tokens, num_kv_heads, head_dim
    )
    return qkv, q, k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("head_dim", "rope_type"),
    [(64, "default"), (128, "llama3"), (96, "linear")],
    ids=["d64", "d128-llama3", "d96-linear"],
)
def test_matches_reference(dtype: torch.dtype, head_dim: int, rope_type: str) -> None:
    inv_freq = rope_inv_freq(head_dim, 500000.0, rope_type, factor=8.0, original_max_position_embeddings=64)
    cache = rope_cos_sin_cache(inv_freq, 4096)
    _, q, k = qk_views(11, 6, 2, head_dim, dtype)
    positions = torch.tensor([0, 1, 2, 15, 16, 63, 64, 700, 2047, 4000, 4095])
    tol = TOL[dtype]
    ref_q, ref_k = apply_rotary_torch(q, positions, cache), apply_rotary_torch(k, positions, cache)
    torch.testing.assert_close(apply_rotary_triton(q, positions, cache), ref_q, atol=tol, rtol=tol)
    out_q, out_k = apply_rotary_qk_triton(q, k, positions, cache)
    torch.testing.assert_close(out_q, ref_q, atol=tol, rtol=tol)
    torch.testing.assert_close(out_k, ref_k, atol=tol, rtol=tol)


def test_inplace_writes_into_the_qkv_buffer() -> None:
    cache = rope_cos_sin_cache(rope_inv_freq(64, 10000.0), 128)
    qkv, q, k = qk_views(7, 4, 2, 64, torch.float32)
    v_before = qkv[:, 6 * 64 :].clone()
    positions = torch.randint(0, 128, (7,))
    ref_q, ref_k = apply_rotary_torch(q, positions, cache), apply_rotary_torch(k, positions, cache)
    out_q, out_k = apply_rotary_qk_triton(q, k, positions, cache, inplace=True)
    assert out_q.data_ptr() == q.data_ptr() and out_k.data_ptr() == k.data_ptr()
    torch.testing.assert_close(q, ref_q, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k, ref_k, atol=1e-6, rtol=1e-6)
    assert torch.equal(qkv[:, 6 * 64 :], v_before)  # v untouched
