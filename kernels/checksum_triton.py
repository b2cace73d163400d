"""The weight checksum (worker/weights/checksum.py) in one pass over memory, in Triton.

The reference, `piece_checksum`'s torch path, widens every element to int64 and materialises an
index tensor and a product: ~29 bytes of traffic per byte of bf16 weights. This kernel reads each
word once and keeps both sums in int64 registers (integer arithmetic wraps modulo 2^64, the
checksum's own modulus), so a 16 GB version is summed at memory speed. Per-program partial sums
are added by torch (int64 sums wrap the same way).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

_BLOCK = 1024
_BLOCKS_PER_PROGRAM = 16
# Unsigned views, so that widening to int64 zero-extends (the checksum reads words as unsigned).
_UNSIGNED_VIEW = {1: torch.uint8, 2: torch.uint16, 4: torch.uint32, 8: torch.int64}


# Sizes and offsets vary per tensor and per rank: specialising on them would compile again for each.
@triton.jit(do_not_specialize=["n", "first_index"])
def _checksum_partials_kernel(
    words_ptr,  # [n] unsigned words (int64 for 8-byte elements: their bits are used as they are)
    partials_ptr,  # [num_programs, 2] int64: this program's (Σ u_i, Σ (i + 1) u_i)
    n,
    first_index,  # global index of words[0]
    BLOCK: tl.constexpr,
    BLOCKS_PER_PROGRAM: tl.constexpr,
):
    program = tl.program_id(0).to(tl.int64)
    sum_a = tl.zeros([BLOCK], dtype=tl.int64)
    sum_b = tl.zeros([BLOCK], dtype=tl.int64)
    start = program * BLOCK * BLOCKS_PER_PROGRAM
    for block in range(BLOCKS_PER_PROGRAM):
        offsets = start + block * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        words = tl.load(words_ptr + offsets, mask=mask, other=0).to(tl.int64)
        sum_a += words
        sum_b += words * (offsets + first_index + 1)
    tl.store(partials_ptr + program * 2, tl.sum(sum_a, axis=0))
    tl.store(partials_ptr + program * 2 + 1, tl.sum(sum_b, axis=0))


def checksum_sums_triton(values: torch.Tensor, first_index: int) -> torch.Tensor:
    """int64 [2]: (A, B) of `values` (elements at global indices first_index + k), wrapped mod 2^64;
    the same numbers as piece_checksum's torch path, without syncing the host."""
    words = values.detach().contiguous().view(-1).view(_UNSIGNED_VIEW[values.element_size()])
    n = words.numel()
    per_program = _BLOCK * _BLOCKS_PER_PROGRAM
    num_programs = max(1, triton.cdiv(n, per_program))
    partials = torch.empty((num_programs, 2), dtype=torch.int64, device=values.device)
    # Triton launches on the thread's current device; staging threads never set theirs.
    with torch.cuda.device(values.device) if values.is_cuda else contextlib.nullcontext():
        _checksum_partials_kernel[(num_programs,)](
            words, partials, n, first_index, BLOCK=_BLOCK, BLOCKS_PER_PROGRAM=_BLOCKS_PER_PROGRAM, num_warps=4
        )
    return partials.sum(dim=0)
