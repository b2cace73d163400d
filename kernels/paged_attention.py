"""Attention over a paged KV cache, and the cache write by slot mapping.

Cache layout: key_cache and value_cache are [num_blocks, block_size, num_kv_heads, head_dim]; token
position p of a sequence lives in block block_table[p // block_size] at offset p % block_size, i.e.
in flat slot block_table[p // block_size] * block_size + p % block_size.

A batch is flat: the new query tokens of every sequence are concatenated ([num_tokens, ...]) and
query_start_loc ([num_seqs + 1], cu_seqlens) marks where each sequence's tokens begin. seq_lens
gives each sequence's context length *including* its new tokens, so the i-th of q new tokens of a
sequence of length L sits at position L - q + i and attends to positions [0, L - q + i] (causal).
Prefill, chunked prefill (extend over a cached prefix) and decode (q = 1) are all the same call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def write_kv_cache_torch(
    key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    value: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64 flat slots
) -> None:
    """Store each token's key and value in its slot (in place)."""
    num_kv_heads, head_dim = key.shape[1], key.shape[2]
    key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key.to(key_cache.dtype))
    value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value.to(value_cache.dtype))


def _gather_context(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """The first seq_len cached positions of one sequence: [seq_len, num_kv_heads, head_dim]."""
    block_size = cache.shape[1]
    num_blocks = (seq_len + block_size - 1) // block_size
    blocks = cache.index_select(0, block_table[:num_blocks])
    return blocks.reshape(-1, cache.shape[2], cache.shape[3])[:seq_len]


def paged_attention_torch(
    query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_seqs, max_blocks_per_seq] int
    seq_lens: list[int],  # [num_seqs] context length including the new tokens
    query_start_loc: list[int],  # [num_seqs + 1]
    scale: float,
) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its cached context (GQA/MQA aware).

    Reference implementation: one SDPA call per sequence, in fp32, so a sequence's result never
    depends on the other sequences of the batch. Query heads are grouped by the kv head they share
    ([kv_heads, group * new_tokens, dim]) instead of repeating keys and values.
    Returns [num_tokens, num_heads, head_dim] in the query's dtype.
    """
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = key_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    for i, seq_len in enumerate(seq_lens):
        start, end = query_start_loc[i], query_start_loc[i + 1]
        num_new = end - start
        keys = _gather_context(key_cache, block_tables[i], seq_len).transpose(0, 1).float()
        values = _gather_context(value_cache, block_tables[i], seq_len).transpose(0, 1).float()
        # [num_new, heads, dim] -> [kv_heads, group * num_new, dim], rows ordered (group, token).
        q = query[start:end].float().view(num_new, num_kv_heads, group, head_dim).permute(1, 2, 0, 3)
        q = q.reshape(num_kv_heads, group * num_new, head_dim)
        mask = None
        if num_new > 1:
            # new token i sits at position seq_len - num_new + i and sees keys up to it.
            query_pos = torch.arange(seq_len - num_new, seq_len, device=query.device)
            key_pos = torch.arange(seq_len, device=query.device)
            mask = (key_pos[None, :] <= query_pos[:, None]).repeat(group, 1)  # [group * num_new, seq_len]
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale)
        attn = attn.view(num_kv_heads, group, num_new, head_dim).permute(2, 0, 1, 3)
        out[start:end] = attn.reshape(num_new, num_heads, head_dim).to(query.dtype)
    return out
