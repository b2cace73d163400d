"""Programmatic dependent launch (Hopper and later): a kernel launched with it may be scheduled
while the kernel before it in the stream is still finishing, and waits on the device, not in the
launch queue, until that kernel's writes are visible.

Why: a batch-1 decode step is ~500 small kernels replayed from a CUDA graph; between two of them the
GPU idles for the launch and ramp-up of the next (~0.35 ms of a 4 ms step on the Qwen3-30B-A3B shape,
bench/profile_moe_w1.py). With it, the next kernel's programs are resident when the previous one
ends. Graph capture keeps the programmatic edges.

The contract every kernel that takes `PDL` keeps: `pdl_prologue(PDL)` before any store and before
any load of what an earlier kernel of the step may write, so nothing reads a previous kernel's output
(or overwrites its input) early. Model weights are the one exception: no kernel of a step writes them
(weight swaps are ordinary copies between steps, on the stream, many kernels before), so gemv_triton
loads its first weight tile before the wait, overlapping the previous kernel's tail. On by default
(EPOCHSERVE_PDL=0 turns it off): it changes no bit (tests/gpu/test_engine_gpu.py), and with the
weight tile loaded early W1 gains 2-7% (H100 and H200, docs/benchmarks.md, 2026-12-07), where
waiting at the first instruction had made it 11% slower. Never on older GPUs or in the interpreter.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@triton.jit
def pdl_prologue(PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_wait()  # the previous kernel has finished and its writes are visible
        tl.extra.cuda.gdc_launch_dependents()  # the next kernel may be scheduled from now on


@functools.lru_cache(maxsize=8)
def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on this device launch with programmatic dependent launch."""
    if device.type != "cuda" or os.environ.get("EPOCHSERVE_PDL", "1") != "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9
