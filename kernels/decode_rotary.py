"""RoPE (with Qwen3's per-head q/k norm in front when asked) and the KV-cache store of a decode
token, done inside the decode attention program instead of a launch of their own
(kernels/paged_attention_kernels.py, ROTARY; entry: paged_attention_triton(..., new=NewTokens(...))).

Why: at batch 1 the separate rotary + store launch (kernels/rotary_kv_cache_triton.py) costs about
what the attention after it costs, once per layer, for a few kilobytes of work. Folded in, each
attention program rotates the query rows it owns in registers, and the program whose partition
holds the new position stores the token's key and value before it reads that partition.

Rows here are [heads, HEAD_DIM_PAD] as the attention program holds them, not the two halves the
rotary kernel loads: each element is paired with its rotate-half partner by a second load. The
arithmetic is written as rotary_triton's, rounding where PyTorch's separate ops round: in the
interpreter the results are the separate kernel's to the bit (tests/kernels/
test_rotary_attention_triton.py); compiled for an H100 they are PyTorch's to the bit
(rotary_store_kv_torch: keys, values and the attention output; tests/gpu/test_kernels_gpu.py). The
sum takes the sign from a select rather than a subtraction, which keeps the compiler from fusing a
product into it (tests/kernels/test_sm90_compile.py checks the PTX for 16-bit fmas). With Qwen3's
q/k norm, a head's sum of squares is the sum of its two halves' sums as there; the order within
each half is the compiler's.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _rotate_rows(
    src_ptr,  # the rows' first elements: [ROWS] pointers
    row_mask,  # [ROWS]
    cos_sin_ptr,  # this token's row of the [max_positions, 2 * HALF] fp32 table
    norm_ptr,  # [2 * HALF] per-head RMSNorm weight (HAS_NORM)
    eps,
    HALF: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    """Rotated rows [ROWS, HEAD_DIM_PAD] in the source's dtype (columns past 2 * HALF: 0)."""
    offs_d = tl.arange(0, HEAD_DIM_PAD)[None, :]
    low = offs_d < HALF
    d_mask = row_mask[:, None] & (offs_d < 2 * HALF)
    partner = tl.where(low, offs_d + HALF, offs_d - HALF)
    x = tl.load(src_ptr[:, None] + offs_d, mask=d_mask, other=0.0)
    xp = tl.load(src_ptr[:, None] + partner, mask=d_mask, other=0.0)
    dt = x.dtype
    a, ap = x.to(tl.float32), xp.to(tl.float32)
    if HAS_NORM:
        squares = a * a  # the first half's sum plus the second's, as rotary_triton adds them
        variance = tl.sum(tl.where(low, squares, 0.0), axis=1) + tl.sum(tl.where(low, 0.0, squares), axis=1)
        scale = tl.math.rsqrt(variance / (2 * HALF) + eps)[:, None]
        d_only = offs_d < 2 * HALF
        w = tl.load(norm_ptr + offs_d, mask=d_only, other=0.0).to(tl.float32)
        wp = tl.load(norm_ptr + partner, mask=d_only, other=0.0).to(tl.float32)
        a = (w * (a * scale).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        ap = (wp * (ap * scale).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    half = offs_d % HALF
    in_row = offs_d < 2 * HALF
    cos = tl.load(cos_sin_ptr + half, mask=in_row, other=0.0).to(dt).to(tl.float32)
    sin = tl.load(cos_sin_ptr + HALF + half, mask=in_row, other=0.0).to(dt).to(tl.float32)
    # x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin, each product rounded to dt first; negating a
    # rounded product is exact, so this is the two-half formula's result bit for bit.
    turned = (ap * sin).to(dt).to(tl.float32)
    rotated = (a * cos).to(dt).to(tl.float32) + tl.where(low, -turned, turned)
    return rotated.to(dt)


@triton.jit
def _store_new_kv(
    k_row_ptr,  # this token's key for this kv head: [2 * HALF] before rotation
    v_row_ptr,
    k_dst_ptr,  # its cache slot for this kv head
    v_dst_ptr,
    cos_sin_ptr,
    norm_ptr,
    eps,
    HALF: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    HAS_NORM: tl.constexpr,
):
    """Rotate the key (normalized first when HAS_NORM) into its slot; copy the value into its own."""
    one = tl.arange(0, 1)
    key = _rotate_rows(k_row_ptr + one, one == 0, cos_sin_ptr, norm_ptr, eps, HALF, HEAD_DIM_PAD, HAS_NORM)
    offs_d = tl.arange(0, HEAD_DIM_PAD)[None, :]
    d_mask = offs_d < 2 * HALF
    tl.store(k_dst_ptr + one[:, None] + offs_d, key.to(k_dst_ptr.dtype.element_ty), mask=d_mask)
    value = tl.load(v_row_ptr + one[:, None] + offs_d, mask=d_mask)
    tl.store(v_dst_ptr + one[:, None] + offs_d, value.to(v_dst_ptr.dtype.element_ty), mask=d_mask)
