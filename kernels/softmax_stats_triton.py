"""Per-row argmax, logsumexp and finiteness of fp32 logits in two launches (reference:
kernels/softmax_stats.py).

Why: torch reduces a lone row of 128k logits on one or a few SMs (H200: log_softmax 29 µs, argmax
28 µs, the finiteness sum 26 µs per decode token at batch 1). Here every row is cut into fixed
CHUNK-wide pieces, one program each (a 128k row: 32 programs), then one program per row combines
the pieces in chunk order. The split depends only on the vocabulary size, so a row's statistics
never depend on the other rows of the launch (batch-invariant as is).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 4096


@triton.jit
def _chunk_stats_kernel(
    logits_ptr,  # [rows, vocab] fp32, unit stride along vocab
    max_ptr,  # [rows, num_chunks] fp32
    index_ptr,  # [rows, num_chunks] int64: first index of the chunk's max
    sum_ptr,  # [rows, num_chunks] fp32: sum of exp(x - chunk max), 0 for an all -inf chunk
    finite_ptr,  # [rows, num_chunks] int32
    vocab,
    row_stride,
    num_chunks,
    CHUNK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * CHUNK + tl.arange(0, CHUNK)
    in_row = cols < vocab
    x = tl.load(logits_ptr + row * row_stride + cols, mask=in_row, other=float("-inf"))
    finite_or_padding = ((x == x) & (tl.abs(x) != float("inf"))) | (cols >= vocab)  # NaN != NaN
    finite = tl.min(finite_or_padding.to(tl.int32), axis=0)
    top = tl.max(x, axis=0)
    first = tl.min(tl.where(x == top, cols, vocab), axis=0)
    # An all -inf chunk shifts by 0 (not by -inf, which gives NaN) and so contributes 0.
    total = tl.sum(tl.exp(x - tl.where(top == float("-inf"), 0.0, top)), axis=0)
    out = row * num_chunks + chunk
    tl.store(max_ptr + out, top)
    tl.store(index_ptr + out, first.to(tl.int64))
    tl.store(sum_ptr + out, total)
    tl.store(finite_ptr + out, finite)


@triton.jit
def _combine_kernel(
    max_ptr,
    index_ptr,
    sum_ptr,
    finite_ptr,  # [rows, num_chunks] from _chunk_stats_kernel
    argmax_ptr,  # [rows] int64
    lse_ptr,  # [rows] fp32
    all_finite_ptr,  # [rows] int32
    num_chunks,
    vocab,
    CHUNKS: tl.constexpr,  # num_chunks rounded up to a power of two
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CHUNKS)
    valid = offs < num_chunks
    part = row * num_chunks + offs
    tops = tl.load(max_ptr + part, mask=valid, other=float("-inf"))
    top = tl.max(tops, axis=0)
    # The first chunk holding the row's max holds its first index: chunks are in vocabulary order.
    firsts = tl.load(index_ptr + part, mask=valid, other=0)
    index = tl.min(tl.where(valid & (tops == top), firsts, vocab), axis=0)
    sums = tl.load(sum_ptr + part, mask=valid, other=0.0)
    shift = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(sums * tl.exp(tops - shift), axis=0)
    lse = shift + tl.log(total)  # an all -inf row: log(0) = -inf
    finite = tl.min(tl.load(finite_ptr + part, mask=valid, other=1), axis=0)
    tl.store(argmax_ptr + row, index)
    tl.store(lse_ptr + row, lse)
    tl.store(all_finite_ptr + row, finite)


def softmax_stats_triton(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [rows, vocab] fp32 (rows may be strided) → (argmax int64, logsumexp fp32, all finite bool)."""
    if logits.dim() != 2 or logits.dtype != torch.float32:
        raise ValueError(f"logits must be [rows, vocab] fp32, got {tuple(logits.shape)} {logits.dtype}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    rows, vocab = logits.shape
    num_chunks = triton.cdiv(vocab, CHUNK)
    device = logits.device
    tops = torch.empty(rows, num_chunks, dtype=torch.float32, device=device)
    firsts = torch.empty(rows, num_chunks, dtype=torch.int64, device=device)
    sums = torch.empty(rows, num_chunks, dtype=torch.float32, device=device)
    finites = torch.empty(rows, num_chunks, dtype=torch.int32, device=device)
    argmax = torch.empty(rows, dtype=torch.int64, device=device)
    lse = torch.empty(rows, dtype=torch.float32, device=device)
    all_finite = torch.empty(rows, dtype=torch.int32, device=device)
    if rows == 0:
        return argmax, lse, all_finite.bool()
    _chunk_stats_kernel[(rows, num_chunks)](
        logits, tops, firsts, sums, finites, vocab, logits.stride(0), num_chunks, CHUNK=CHUNK, num_warps=8
    )
    _combine_kernel[(rows,)](
        tops, firsts, sums, finites, argmax, lse, all_finite, num_chunks, vocab,
        CHUNKS=triton.next_power_of_2(num_chunks), num_warps=1,
    )  # fmt: skip
    return argmax, lse, all_finite.bool()
