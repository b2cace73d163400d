"""Fingerprint: one short digest of a worker's weights, across all its TP ranks (docs/design.md §1 I4)."""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from epochserve.worker.layers.parallel import TensorParallel
from epochserve.worker.weights.checksum import tensor_checksum, to_int64_pair


@torch.no_grad()
def fingerprint(tensors: dict[str, torch.Tensor], tp: TensorParallel) -> str:
    """sha256 (32 hex digits) over every rank's per-tensor checksums, by parameter name. Staged twins
    and the live parameters they are copied into give the same fingerprint."""
    names = sorted(tensors)
    local = torch.stack([to_int64_pair(tensor_checksum(tensors[name])) for name in names])
    if tp.size > 1:
        gathered = [torch.empty_like(local) for _ in range(tp.size)]
        dist.all_gather(gathered, local, group=tp.update_group)
        local = torch.stack(gathered)
    digest = hashlib.sha256(",".join(names).encode())
    digest.update(local.numpy().tobytes())
    return digest.hexdigest()[:32]
