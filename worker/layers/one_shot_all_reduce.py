"""Small all-reduces of a TP group on GPUs of one host, in one peer-to-peer kernel.

A decode step all-reduces a few rows after every row-parallel layer (64 times per token for an 8B
Llama): latency, not bandwidth, is what they cost, and NCCL's protocol takes ~15 µs each. Here every
rank copies its rows into a buffer in symmetric memory (mapped into every peer's address space),
and one kernel per rank reads all the ranks' rows over NVLink and sums them locally in rank order:
the ranks get identical sums. NVLink multicast is not used. Messages larger than the buffer
(prefill chunks) go through NCCL, which is faster for them.
"""

from __future__ import annotations

from typing import Any

import torch

# A batch-256 decode step of a hidden size 4096 model in bf16; larger messages go through NCCL.
MAX_BYTES = 2 << 20


class OneShotAllReduce:
    def __init__(self, group: Any, device: torch.device, max_bytes: int = MAX_BYTES) -> None:
        import torch.distributed._symmetric_memory as symmetric_memory

        self.group_name = group.group_name
        self.buffer = symmetric_memory.empty(max_bytes, dtype=torch.uint8, device=device)
        symmetric_memory.rendezvous(self.buffer, self.group_name)  # a collective: every rank, once

    def __call__(self, x: torch.Tensor) -> torch.Tensor | None:
        """The sum of x over the group in a new tensor, or None when x does not fit the buffer."""
        nbytes = x.numel() * x.element_size()
        if nbytes > self.buffer.numel() or not x.is_cuda:
            return None
        staging = self.buffer[:nbytes].view(x.dtype).view(x.shape)
        out = torch.empty_like(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(staging, x.contiguous(), "sum", self.group_name, out)
        return out
