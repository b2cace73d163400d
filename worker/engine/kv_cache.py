"""The KV pool: one tensor holding every layer's key and value blocks, and how big it may be.

Sized from a memory budget: on CPU a byte budget; on CUDA a fraction of the memory that is free
after the weights are loaded. Waste is at most one partial block per sequence (blocks are the unit).
"""

from __future__ import annotations

import logging

import torch

from epochserve.errors import ConfigError
from epochserve.worker.layers.attention import LayerKVCache

logger = logging.getLogger(__name__)


def bytes_per_block(
    num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    """Keys and values of block_size tokens across all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * element


def num_blocks_for_budget(
    budget_bytes: int, num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    per_block = bytes_per_block(num_layers, block_size, num_kv_heads, head_dim, dtype)
    num_blocks = budget_bytes // per_block
    if num_blocks < 1:
        raise ConfigError(f"KV budget of {budget_bytes} bytes holds no block of {per_block} bytes")
    return int(num_blocks)


def cuda_kv_budget_bytes(device: torch.device, memory_fraction: float) -> int:
    """A fraction of the device memory that is free now (call after the weights are loaded)."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * memory_fraction)


class KVCachePool:
    """Storage [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim] and per-layer views."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.storage = torch.zeros(
            num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype, device=device
        )
        self.layers = [
            LayerKVCache(key=self.storage[i, 0], value=self.storage[i, 1]) for i in range(num_layers)
        ]
        logger.info(
            "KV pool: %d blocks x %d tokens (%.1f MiB, %s on %s)",
            num_blocks,
            block_size,
            self.storage.numel() * self.storage.element_size() / 2**20,
            dtype,
            device,
        )
