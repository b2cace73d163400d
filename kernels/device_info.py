"""Device facts the kernels' launch planning reads on every call, cached per device (a CUDA
properties query costs microseconds each time). CPU tensors mean the Triton interpreter."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=8)
def num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # interpreter runs: any small number exercises the same code paths
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=8)
def has_tma(device: torch.device) -> bool:
    """Whether kernels may load through TMA descriptors: Hopper (sm_90) and later, or the interpreter."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 9
