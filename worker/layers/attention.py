"""Attention over the paged KV cache: the forward context a step's model call needs, and the layer
that stores new keys/values then attends.

AttentionMetadata is created by ModelRunner for each step and passed down explicitly (no globals).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from epochserve.kernels.rotary import QKNorm
from epochserve.worker.layers.ops import TorchOps


@dataclass(slots=True)
class AttentionMetadata:
    """Where a step's tokens go in the KV cache and what each sequence attends to.

    Created by ModelRunner.prepare, consumed by every PagedAttention layer of one forward pass.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64 flat cache slot of each new token
    block_tables: torch.Tensor  # [num_seqs, max_blocks_per_seq] int32
    seq_lens: list[int]  # [num_seqs] context length including this step's tokens
    query_start_loc: list[int]  # [num_seqs + 1] cu_seqlens of the new tokens
    # The same on the device, and host-side bounds, for kernels that must not sync (Triton, graphs).
    seq_lens_tensor: torch.Tensor | None = None  # [num_seqs] int32
    query_start_loc_tensor: torch.Tensor | None = None  # [num_seqs + 1] int32
    max_query_len: int = 0
    max_seq_len: int = 0


@dataclass(slots=True)
class LayerKVCache:
    """One layer's slice of the KV pool; the tensors are views into KVCachePool's storage."""

    key: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    value: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]


class PagedAttention(nn.Module):
    """Rotate this step's queries and keys, store keys/values in their slots, then attend causally
    over each sequence's cache."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, ops: TorchOps) -> None:
        super().__init__()
        self.ops = ops
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        v: torch.Tensor,
        positions: torch.Tensor,  # [num_tokens]
        cos_sin: torch.Tensor,  # [max_positions, head_dim] fp32 RoPE table
        cache: LayerKVCache,
        meta: AttentionMetadata,
        qk_norm: QKNorm | None = None,  # Qwen3: each q and k head RMS-normalized before RoPE
    ) -> torch.Tensor:
        return self.ops.rotary_attention(q, k, v, positions, cos_sin, cache, meta, self.scale, qk_norm)
