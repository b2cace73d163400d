"""Rotary position embedding (RoPE), rotate-half layout as in Hugging Face Llama/Qwen.

`rope_cos_sin_cache` builds the per-position table once; `apply_rotary_torch` is the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from epochserve.kernels.paged_attention import write_kv_cache_torch
from epochserve.kernels.rmsnorm import rms_norm_torch


@dataclass(frozen=True, slots=True)
class QKNorm:
    """Per-head RMSNorm of queries and keys before RoPE (Qwen3): each head's own weight vector."""

    q_weight: torch.Tensor  # [head_dim]
    k_weight: torch.Tensor  # [head_dim]
    eps: float


def rope_inv_freq(
    head_dim: int,
    theta: float,
    rope_type: str = "default",
    factor: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
    original_max_position_embeddings: int = 8192,
) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in fp32, with linear or Llama-3 scaling applied."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if rope_type == "linear":
        return inv_freq / factor
    if rope_type != "llama3":
        return inv_freq
    # Llama 3: long wavelengths are slowed down by `factor`, short ones kept, the band between
    # interpolated smoothly.
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (
        high_freq_factor - low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin_cache(inv_freq: torch.Tensor, max_positions: int) -> torch.Tensor:
    """[max_positions, head_dim] fp32: cos(p * inv_freq) in the first half of the last dim, sin in
    the second (each half head_dim / 2 wide, as both halves of a head rotate by the same angles)."""
    positions = torch.arange(max_positions, dtype=torch.int64).float()
    freqs = positions[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1)


def apply_rotary_torch(
    x: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    positions: torch.Tensor,  # [num_tokens] int
    cos_sin_cache: torch.Tensor,  # [max_positions, head_dim] fp32
) -> torch.Tensor:
    """Rotate x by its positions; returns a new tensor of x's dtype. cos/sin are cast to x's dtype
    first, as Hugging Face does, so bf16 results round the same way."""
    half = x.shape[-1] // 2
    cos_sin = cos_sin_cache.index_select(0, positions).to(x.dtype)
    cos = cos_sin[:, None, :half]
    sin = cos_sin[:, None, half:]
    x1, x2 = x[..., :half], x[..., half:]
    # (x * cos_full + rotate_half(x) * sin_full), written per half to avoid building full-width copies.
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def rotary_store_kv_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    qk_norm: QKNorm | None = None,
) -> torch.Tensor:
    """The reference: (RMS-normalize each q and k head, when qk_norm,) rotate q and k, store k and
    v (every slot must be a real one)."""
    if qk_norm is not None:
        q = rms_norm_torch(q, qk_norm.q_weight, qk_norm.eps)
        k = rms_norm_torch(k, qk_norm.k_weight, qk_norm.eps)
    write_kv_cache_torch(
        apply_rotary_torch(k, positions, cos_sin_cache), v, key_cache, value_cache, slot_mapping
    )
    return apply_rotary_torch(q, positions, cos_sin_cache)
