"""Rotary position embedding in Triton (reference: apply_rotary_torch in kernels/rotary.py).

Rotate-half layout; cos/sin come from the same [max_positions, head_dim] fp32 table the reference
uses (Llama-3 or linear scaling is already baked into it). To round like the reference, cos/sin are
cast to x's dtype first and every product is rounded to x's dtype before the add, as separate
PyTorch ops would. Launched with enable_fp_fusion=False: with fusion on, the compiler narrows the
rounded products and their sum to bf16 arithmetic and contracts one product and the sum into a bf16
fma, skipping that product's rounding; the keys then differed from PyTorch's (and transformers')
rotation by one ulp in ~17% of elements on an H100 (2026-12-07, docs/kernels.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Launch option of every kernel that rotates (module doc): no fma across a product's rounding.
NO_FP_FUSION = dict(enable_fp_fusion=False)


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, token, stride_st, stride_sh, stride_dt, stride_dh, cos, sin, norm_ptr, eps,
    NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
    HAS_NORM: tl.constexpr,
):  # fmt: skip
    """Rotate all heads of one token: [NUM_HEADS, 2 * HALF] from src to dst (may be the same).
    HAS_NORM: RMS-normalize each head first with the weight at norm_ptr [2 * HALF] (Qwen3's q/k
    norm), rounding where rms_norm_torch rounds: the normalized value, then its product with the
    weight. Only the order of the head's sum of squares may differ from the separate norm kernel."""
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < NUM_HEADS) & (dims < HALF)
    src = src_ptr + token * stride_st + heads * stride_sh + dims
    x1 = tl.load(src, mask=mask, other=0.0)
    x2 = tl.load(src + HALF, mask=mask, other=0.0)
    dt = x1.dtype
    a1, a2 = x1.to(tl.float32), x2.to(tl.float32)
    if HAS_NORM:
        variance = (tl.sum(a1 * a1, axis=1) + tl.sum(a2 * a2, axis=1)) / (2 * HALF)
        scale = tl.math.rsqrt(variance + eps)[:, None]
        w1 = tl.load(norm_ptr + dims, mask=dims < HALF, other=0.0).to(tl.float32)
        w2 = tl.load(norm_ptr + HALF + dims, mask=dims < HALF, other=0.0).to(tl.float32)
        a1 = (w1 * (a1 * scale).to(dt).to(tl.float32)).to(dt).to(tl.float32)
        a2 = (w2 * (a2 * scale).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    out1 = (a1 * cos).to(dt).to(tl.float32) - (a2 * sin).to(dt).to(tl.float32)
    out2 = (a2 * cos).to(dt).to(tl.float32) + (a1 * sin).to(dt).to(tl.float32)
    dst = dst_ptr + token * stride_dt + heads * stride_dh + dims
    tl.store(dst, out1.to(dt), mask=mask)
    tl.store(dst + HALF, out2.to(dt), mask=mask)


@triton.jit
def _cos_sin(cos_sin_ptr, positions_ptr, token, stride_cs, dt, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """The token's cos and sin rows [1, BLOCK_HALF], cast to x's dtype first (the reference does
    `cos_sin.to(x.dtype)`), then to fp32 for the arithmetic."""
    pos = tl.load(positions_ptr + token).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    row = cos_sin_ptr + pos * stride_cs + dims
    cos = tl.load(row, mask=dims < HALF, other=0.0).to(dt).to(tl.float32)
    sin = tl.load(row + HALF, mask=dims < HALF, other=0.0).to(dt).to(tl.float32)
    return cos, sin


@triton.jit
def _rotary_kernel(
    q_ptr, q_out_ptr, k_ptr, k_out_ptr, positions_ptr, cos_sin_ptr,
    stride_qt, stride_qh, stride_qot, stride_qoh, stride_kt, stride_kh, stride_kot, stride_koh,
    stride_cs,
    NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, HAS_K: tl.constexpr,
):  # fmt: skip
    """One program per token: reads its cos/sin row once, rotates q's heads (and k's)."""
    token = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(
        cos_sin_ptr, positions_ptr, token, stride_cs, q_ptr.dtype.element_ty, HALF, BLOCK_HALF
    )
    _rotate_heads(q_ptr, q_out_ptr, token, stride_qt, stride_qh, stride_qot, stride_qoh, cos, sin,
                  q_ptr, 0.0, NUM_Q_HEADS, BLOCK_QH, HALF, BLOCK_HALF, False)  # fmt: skip
    if HAS_K:
        _rotate_heads(k_ptr, k_out_ptr, token, stride_kt, stride_kh, stride_kot, stride_koh, cos, sin,
                      k_ptr, 0.0, NUM_K_HEADS, BLOCK_KH, HALF, BLOCK_HALF, False)  # fmt: skip


def _prepare(x: torch.Tensor, inplace: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, destination) for one [num_tokens, num_heads, head_dim] input."""
    if x.dim() != 3 or x.shape[-1] % 2:
        raise ValueError(f"expected [num_tokens, num_heads, even head_dim], got {tuple(x.shape)}")
    if x.stride(-1) != 1:
        if inplace:
            raise ValueError("inplace rotary needs a contiguous head_dim")
        x = x.contiguous()
    return x, x if inplace else torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _launch(
    q: torch.Tensor,
    k: torch.Tensor | None,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    inplace: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    q, q_out = _prepare(q, inplace)
    k, k_out = _prepare(k, inplace) if k is not None else (q, q_out)
    if k.dtype != q.dtype:
        raise ValueError("q and k must share a dtype")
    num_tokens, head_dim = q.shape[0], q.shape[-1]
    if num_tokens:
        _rotary_kernel[(num_tokens,)](
            q, q_out, k, k_out, positions, cos_sin_cache,
            q.stride(0), q.stride(1), q_out.stride(0), q_out.stride(1),
            k.stride(0), k.stride(1), k_out.stride(0), k_out.stride(1), cos_sin_cache.stride(0),
            NUM_Q_HEADS=q.shape[1], NUM_K_HEADS=k.shape[1],
            BLOCK_QH=triton.next_power_of_2(q.shape[1]), BLOCK_KH=triton.next_power_of_2(k.shape[1]),
            HALF=head_dim // 2, BLOCK_HALF=triton.next_power_of_2(head_dim // 2), HAS_K=k is not q,
            num_warps=4, **NO_FP_FUSION,
        )  # fmt: skip
    return q_out, (k_out if k is not q else None)


def apply_rotary_triton(
    x: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    positions: torch.Tensor,  # [num_tokens] int
    cos_sin_cache: torch.Tensor,  # [max_positions, head_dim] fp32
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """Rotate x by its positions; a new tensor of x's dtype, or x itself rotated when inplace."""
    return _launch(x, None, positions, cos_sin_cache, inplace)[0]


def apply_rotary_qk_triton(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    positions: torch.Tensor,  # [num_tokens] int
    cos_sin_cache: torch.Tensor,  # [max_positions, head_dim] fp32
    *,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k in one launch (each token's cos/sin row read once). With inplace, q and k
    (e.g. views into the qkv projection's output) are overwritten and returned."""
    q_out, k_out = _launch(q, k, positions, cos_sin_cache, inplace)
    assert k_out is not None
    return q_out, k_out
