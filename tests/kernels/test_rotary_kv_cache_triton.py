"""rotary_store_kv_triton vs rotary_store_kv_torch (kernels/rotary.py): RoPE on q and k and the
KV-cache write in one launch.

Tolerances: the rotation is rotary_triton's arithmetic (rounded where the reference's separate ops
round), so q and the stored keys match to rotary's tolerances (fp32 1e-6: an fma may move the last
bit; fp16 one ulp, 1e-3); values are copied, so equal bit for bit.
"""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.rotary import (
    QKNorm,
    apply_rotary_torch,
    rope_cos_sin_cache,
    rope_inv_freq,
    rotary_store_kv_torch,
)
from epochserve.kernels.rotary_kv_cache_triton import rotary_store_kv_triton

TOL = {torch.float32: 1e-6, torch.float16: 1e-3}


def qkv_views(num_tokens: int, num_heads: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype):
    """q, k, v as strided views into one merged qkv tensor (how the model produces them)."""
    gen = torch.Generator().manual_seed(num_tokens * head_dim + num_kv_heads)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen).to(dtype)
    q, k, v = qkv.split([num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    return (
        q.view(num_tokens, num_heads, head_dim),
        k.view(num_tokens, num_kv_heads, head_dim),
        v.view(num_tokens, num_kv_heads, head_dim),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim", "block_size", "rope_type"),
    [
        (6, 2, 64, 16, "default"),
        (3, 1, 128, 32, "llama3"),
        (8, 8, 96, 16, "linear"),
        (24, 3, 64, 32, "default"),
    ],
    ids=["gqa3-d64-b16", "gqa3-mqa-d128-b32-llama3", "mha-d96-b16", "gqa8-d64-b32"],
)
def test_matches_reference(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, rope_type: str
) -> None:
    inv_freq = rope_inv_freq(head_dim, 500000.0, rope_type, factor=8.0, original_max_position_embeddings=64)
    cos_sin = rope_cos_sin_cache(inv_freq, 4096)
    num_tokens, num_blocks = 11, 5
    q, k, v = qkv_views(num_tokens, num_heads, num_kv_heads, head_dim, dtype)
    assert not k.is_contiguous()
    positions = torch.tensor([0, 1, 2, 15, 16, 63, 64, 700, 2047, 4000, 4095])
    gen = torch.Generator().manual_seed(7)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]  # crosses blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache, value_cache = (
        torch.randn(shape, generator=gen).to(dtype),
        torch.randn(shape, generator=gen).to(dtype),
    )
    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    ref_q = rotary_store_kv_torch(q, k, v, positions, cos_sin, ref_k, ref_v, slots)
    out_q = rotary_store_kv_triton(q, k, v, positions, cos_sin, key_cache, value_cache, slots)
    tol = TOL[dtype]
    torch.testing.assert_close(out_q, ref_q, atol=tol, rtol=tol)
    torch.testing.assert_close(key_cache, ref_k, atol=tol, rtol=tol)
    assert torch.equal(value_cache, ref_v)
    untouched = torch.ones(num_blocks * block_size, dtype=torch.bool)
    untouched[slots] = False  # every slot nobody wrote keeps its old bytes
    assert torch.equal(key_cache.flatten(0, 1)[untouched], ref_k.flatten(0, 1)[untouched])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_qk_norm_in_front_matches_the_reference(dtype: torch.dtype) -> None:
    """QKNorm (Qwen3): every q and k head RMS-normalized with its own weight, then rotated; against
    rms_norm_torch then the reference, within the rounding tolerance (the sum of squares may run in
    another order); without it, q and k come out at another scale, so the check has teeth."""
    head_dim, block_size, num_tokens = 64, 16, 7
    cos_sin = rope_cos_sin_cache(rope_inv_freq(head_dim, 10000.0), 512)
    q, k, v = qkv_views(num_tokens, 6, 2, head_dim, dtype)
    gen = torch.Generator().manual_seed(9)
    norm = QKNorm((1 + torch.randn(head_dim, generator=gen) / 4).to(dtype),
                  (1 + torch.randn(head_dim, generator=gen) / 4).to(dtype), 1e-6)  # fmt: skip
    q, k = q * 3, k * 5  # far from unit RMS
    positions, slots = torch.arange(3, 3 + num_tokens), torch.arange(num_tokens) * 2
    shape = (2, 2 * block_size, 2, head_dim)
    key_cache, value_cache = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    ref_q = rotary_store_kv_torch(q, k, v, positions, cos_sin, ref_k, ref_v, slots, norm)
    out_q = rotary_store_kv_triton(q, k, v, positions, cos_sin, key_cache, value_cache, slots, norm)
    tol = TOL[dtype]
    torch.testing.assert_close(out_q, ref_q, atol=tol, rtol=tol)
    torch.testing.assert_close(key_cache, ref_k, atol=tol, rtol=tol)
    assert torch.equal(value_cache, ref_v)
    unnormed = rotary_store_kv_triton(q, k, v, positions, cos_sin, key_cache.clone(), value_cache, slots)
    assert not torch.allclose(unnormed, ref_q, atol=0.1, rtol=0.1)
    with pytest.raises(ValueError, match="head_dim"):
        rotary_store_kv_triton(q, k, v, positions, cos_sin, key_cache, value_cache, slots,
                               QKNorm(norm.q_weight[:8], norm.k_weight, 1e-6))  # fmt: skip


def test_a_negative_slot_rotates_q_and_stores_nothing() -> None:
    cos_sin = rope_cos_sin_cache(rope_inv_freq(64, 10000.0), 128)
    q, k, v = qkv_views(3, 4, 2, 64, torch.float32)
    positions, slots = torch.tensor([5, 6, 7]), torch.tensor([3, -1, 20])
    key_cache, value_cache = torch.randn(2, 16, 2, 64), torch.randn(2, 16, 2, 64)
    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    keep = slots >= 0
    rotary_store_kv_torch(q[keep], k[keep], v[keep], positions[keep], cos_sin, ref_k, ref_v, slots[keep])
    out_q = rotary_store_kv_triton(q, k, v, positions, cos_sin, key_cache, value_cache, slots)
    torch.testing.assert_close(out_q, apply_rotary_torch(q, positions, cos_sin), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(key_cache, ref_k, atol=1e-6, rtol=1e-6)
    assert torch.equal(value_cache, ref_v)


def test_refuses_a_cache_of_another_dtype() -> None:
    cos_sin = rope_cos_sin_cache(rope_inv_freq(64, 10000.0), 16)
    q, k, v = qkv_views(2, 2, 1, 64, torch.float32)
    cache = torch.zeros(1, 16, 1, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        rotary_store_kv_triton(
            q, k, v, torch.tensor([0, 1]), cos_sin, cache, cache.clone(), torch.tensor([0, 1])
        )
