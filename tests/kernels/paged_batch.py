"""Random paged-attention batches for the kernel tests (CPU interpreter and GPU)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class PagedBatch:
    """A flat batch over a shuffled paged cache; q is a view into a merged qkv tensor when asked."""

    query: torch.Tensor  # [num_tokens, num_heads, head_dim]
    key_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32

    @property
    def max_query_len(self) -> int:
        return int((self.query_start_loc[1:] - self.query_start_loc[:-1]).max())

    @property
    def max_seq_len(self) -> int:
        return int(self.seq_lens.max())

    def reference_args(self) -> tuple[list[int], list[int]]:
        return self.seq_lens.tolist(), self.query_start_loc.tolist()


def make_paged_batch(
    seqs: list[tuple[int, int]],  # (seq_len, num_new_tokens) per sequence
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    *,
    merged_qkv: bool = True,
    seed: int = 0,
) -> PagedBatch:
    """Pages are drawn in a random order so that neighbouring positions live in distant blocks."""
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed)  # big tensors are drawn where they live
    blocks_per_seq = [-(-seq_len // block_size) for seq_len, _ in seqs]
    num_blocks = sum(blocks_per_seq) + 3  # spare blocks hold random data nobody should read
    perm = torch.randperm(num_blocks, generator=gen)
    max_blocks = max(blocks_per_seq)
    # Unused table entries point at a spare block: a kernel that reads past seq_len sees garbage.
    block_tables = torch.full((len(seqs), max_blocks), int(perm[-1]), dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = perm[used : used + n]
        used += n
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.randn(cache_shape, generator=dev_gen, device=device).to(dtype)
    value_cache = torch.randn(cache_shape, generator=dev_gen, device=device).to(dtype)
    num_tokens = sum(q for _, q in seqs)
    if merged_qkv:
        width = (num_heads + 2 * num_kv_heads) * head_dim
        qkv = torch.randn(num_tokens, width, generator=dev_gen, device=device).to(dtype)
        query = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    else:
        query = torch.randn(num_tokens, num_heads, head_dim, generator=dev_gen, device=device).to(dtype)
    starts = [0]
    for _, q in seqs:
        starts.append(starts[-1] + q)
    return PagedBatch(
        query=query,
        key_cache=key_cache,
        value_cache=value_cache,
        block_tables=block_tables.to(device),
        seq_lens=torch.tensor([s for s, _ in seqs], dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
    )
