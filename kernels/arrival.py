"""Folding a reduction into the programs that produce its parts: the last program to arrive folds.

A split product (attention partitions, one expert's share of an MoE output) usually needs a second
launch to sum its parts. Instead, each program stores its part, then takes a ticket from a counter
of its group; the program that draws the last ticket reads every part (in a fixed order, so the
bits are those of the second launch) and sets the counter back to 0. At batch-1 decode a launch and
its gap cost more than the fold itself.

Ordering: the compiler puts a CTA barrier before and after a scalar atomic (checked in its PTX), so
every warp's stores are released with the ticket and the last program's loads come after its
acquire. Counters live in one zeroed int32 buffer per device, never freed, since a CUDA graph replays
on the address it captured, and every launch leaves its counters at 0. Kernels of one stream run one
after another, so they share it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MIN_COUNTERS = 1 << 14  # counters the first buffer of a device holds
_buffers: dict[torch.device, list[torch.Tensor]] = {}  # per device, the newest last


@triton.jit
def last_to_arrive(counter_ptr, arrivals):
    """True in the program that brings the counter to `arrivals` (and sets it back to 0). Every
    program of the group calls this once, after its stores."""
    last = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == arrivals - 1
    if last:  # the others have all arrived: nobody else touches the counter in this launch
        tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")
    return last


def arrival_counters(device: torch.device, needed: int) -> torch.Tensor | None:
    """A zeroed int32 buffer of at least `needed` counters, or None while a CUDA graph is being
    captured and the device has none that large (the caller then launches its reduction instead: a
    buffer allocated inside the capture would belong to the graph's pool)."""
    buffers = _buffers.setdefault(device, [])
    if buffers and buffers[-1].numel() >= needed:
        return buffers[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    buffers.append(torch.zeros(max(_MIN_COUNTERS, 2 * needed), dtype=torch.int32, device=device))
    return buffers[-1]


def counters_in_use(device: torch.device) -> torch.Tensor:
    """The newest buffer of a device (tests check that launches leave it at 0)."""
    return _buffers[device][-1]
