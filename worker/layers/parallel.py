"""Tensor-parallel context: which slice of each layer this process holds and how ranks combine.

Passed explicitly to every parallel layer (no module-global state). With size 1 every collective is
a no-op, so single-device models pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    group: Any = None  # torch.distributed group of the TP ranks for tensors (NCCL on GPU, gloo on CPU)
    cpu_group: Any = None  # gloo group of the same ranks for rank 0's commands and small CPU collectives
    # gloo group for weight-update collectives, which run on staging threads while the engine
    # thread uses cpu_group: one group per thread keeps each group's collectives in one order.
    update_group: Any = None
    # CUDA: a one-kernel all-reduce for small messages (layers/one_shot_all_reduce.py), else None.
    small_all_reduce: Callable[[torch.Tensor], torch.Tensor | None] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"TP rank {self.rank} outside [0, {self.size})")

    def split(self, total: int, what: str) -> int:
        """The per-rank share of `total` items; raises ValueError when they don't divide evenly."""
        if total % self.size:
            raise ValueError(f"{what} ({total}) is not divisible by the tensor-parallel size {self.size}")
        return total // self.size

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the TP ranks: the result (x itself, or a new tensor for small messages on CUDA)."""
        if self.size == 1:
            return x
        if self.small_all_reduce is not None:
            summed = self.small_all_reduce(x)
            if summed is not None:
                return summed
        dist.all_reduce(x, group=self.group)
        return x

    def min_over_ranks(self, value: int) -> int:
        """The smallest of every rank's value (e.g. how many KV blocks all ranks can hold)."""
        if self.size == 1:
            return value
        box = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(box, op=dist.ReduceOp.MIN, group=self.cpu_group)
        return int(box.item())

    def all_gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's x along the last dim, in rank order."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


SINGLE_DEVICE = TensorParallel()
