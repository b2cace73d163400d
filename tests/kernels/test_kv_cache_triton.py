"""write_kv_cache_triton vs write_kv_cache_torch: a pure copy, so results must be equal bit for bit."""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.kv_cache_triton import write_kv_cache_triton
from epochserve.kernels.paged_attention import write_kv_cache_torch


@pytest.mark.parametrize(("block_size", "num_kv_heads", "head_dim"), [(16, 2, 64), (32, 3, 128), (16, 1, 80)])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_matches_reference_from_qkv_slices(
    block_size: int, num_kv_heads: int, head_dim: int, cache_dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(block_size + num_kv_heads)
    num_tokens, num_blocks, num_heads = 37, 6, 2 * num_kv_heads
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=gen)
    kv_width = num_kv_heads * head_dim
    key = qkv[:, num_heads * head_dim :][:, :kv_width].view(num_tokens, num_kv_heads, head_dim)
    value = qkv[:, -kv_width:].view(num_tokens, num_kv_heads, head_dim)
    assert not key.is_contiguous()
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]  # crosses blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.randn(shape, generator=gen).to(cache_dtype)
    value_cache = torch.randn(shape, generator=gen).to(cache_dtype)
    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    write_kv_cache_torch(key, value, ref_k, ref_v, slots)
    write_kv_cache_triton(key, value, key_cache, value_cache, slots)
    assert torch.equal(key_cache, ref_k) and torch.equal(value_cache, ref_v)


def test_negative_slots_are_skipped() -> None:
    key = torch.randn(5, 2, 64)
    value = torch.randn(5, 2, 64)
    slots = torch.tensor([3, -1, 17, -1, 40])
    key_cache, value_cache = torch.randn(3, 16, 2, 64), torch.randn(3, 16, 2, 64)
    ref_k, ref_v = key_cache.clone(), value_cache.clone()
    keep = slots >= 0
    write_kv_cache_torch(key[keep], value[keep], ref_k, ref_v, slots[keep])
    write_kv_cache_triton(key, value, key_cache, value_cache, slots)
    assert torch.equal(key_cache, ref_k) and torch.equal(value_cache, ref_v)
