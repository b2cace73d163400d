"""RoPE on q and k, then the KV-cache write, in one launch (reference: rotary_store_kv_torch in
kernels/rotary.py, which composes apply_rotary_torch and write_kv_cache_torch), with Qwen3's
per-head q/k RMSNorm in front when asked (QKNorm: two launches fewer per layer).

Why one kernel: in a decode step each of these is a tiny launch per layer, and on a batch-1 step
the fixed cost of a launch is about what it moves; fusing drops one launch per layer and the
rotated key's round trip through memory. The arithmetic is rotary_triton's (same rounding), the
store is kv_cache_triton's (negative slots skipped), so results are bit-identical to the two
kernels run one after the other.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from epochserve.kernels.pdl import pdl_enabled, pdl_prologue
from epochserve.kernels.rotary import QKNorm
from epochserve.kernels.rotary_triton import NO_FP_FUSION, _cos_sin, _rotate_heads


@triton.jit
def _rotary_store_kv_kernel(
    q_ptr, q_out_ptr, k_ptr, v_ptr, key_cache_ptr, value_cache_ptr, positions_ptr, slot_mapping_ptr,
    cos_sin_ptr, q_norm_ptr, k_norm_ptr, eps,
    stride_qt, stride_qh, stride_qot, stride_qoh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch, stride_cs,
    NUM_Q_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, BLOCK_QH: tl.constexpr, BLOCK_KH: tl.constexpr,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, PAGE_SIZE: tl.constexpr, HAS_NORM: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """One program per token: rotate its q heads into q_out; rotate its k heads and copy its v
    heads straight into the token's cache slot."""
    pdl_prologue(PDL)
    token = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(
        cos_sin_ptr, positions_ptr, token, stride_cs, q_ptr.dtype.element_ty, HALF, BLOCK_HALF
    )
    _rotate_heads(q_ptr, q_out_ptr, token, stride_qt, stride_qh, stride_qot, stride_qoh, cos, sin,
                  q_norm_ptr, eps, NUM_Q_HEADS, BLOCK_QH, HALF, BLOCK_HALF, HAS_NORM)  # fmt: skip
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot >= 0:  # padding tokens of a CUDA-graph batch own no slot
        block = slot // PAGE_SIZE
        offset = slot % PAGE_SIZE
        k_dst = key_cache_ptr + block * stride_kcb + offset * stride_kcs
        # The cache row of one token is [kv heads, head_dim], like a token row of k: rotate into it.
        _rotate_heads(k_ptr, k_dst, token, stride_kt, stride_kh, 0, stride_kch, cos, sin,
                      k_norm_ptr, eps, NUM_KV_HEADS, BLOCK_KH, HALF, BLOCK_HALF, HAS_NORM)  # fmt: skip
        heads = tl.arange(0, BLOCK_KH)[:, None]
        full = tl.arange(0, 2 * BLOCK_HALF)[None, :]
        mask = (heads < NUM_KV_HEADS) & (full < 2 * HALF)
        value = tl.load(v_ptr + token * stride_vt + heads * stride_vh + full, mask=mask)
        v_dst = value_cache_ptr + block * stride_vcb + offset * stride_vcs + heads * stride_vch + full
        tl.store(v_dst, value.to(value_cache_ptr.dtype.element_ty), mask=mask)


def check_rotary_store_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    qk_norm: QKNorm | None,
) -> None:
    """ValueError unless q/k/v and the caches fit a rotate-and-store kernel (this one, or the
    rotation folded into decode attention, kernels/decode_rotary.py)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 3 or x.stride(-1) != 1:
            raise ValueError(f"{name}: expected [num_tokens, heads, head_dim] with contiguous head_dim")
    if key_cache.dtype != k.dtype or key_cache.stride(-1) != 1 or value_cache.stride(-1) != 1:
        raise ValueError("caches need k's dtype and a contiguous head_dim")
    head_dim = q.shape[-1]
    if head_dim % 2 or k.shape[-1] != head_dim or key_cache.shape[-1] != head_dim:
        raise ValueError(
            f"head_dim must be even and shared, got {head_dim}, {k.shape[-1]}, {key_cache.shape[-1]}"
        )
    if qk_norm is not None and not (qk_norm.q_weight.numel() == qk_norm.k_weight.numel() == head_dim):
        raise ValueError(f"q/k norm weights must have head_dim = {head_dim} values")


def rotary_store_kv_triton(
    q: torch.Tensor,  # [num_tokens, num_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    v: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
    positions: torch.Tensor,  # [num_tokens] int
    cos_sin_cache: torch.Tensor,  # [max_positions, head_dim] fp32
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,  # [num_tokens] int64; negative: not stored
    qk_norm: QKNorm | None = None,
) -> torch.Tensor:
    """Rotate q (returned, a new tensor) and k by their positions; store rotated k and v in their
    cache slots. q/k/v may be strided views of a merged qkv projection (head_dim contiguous).
    The caches must have k's dtype (the rotated key is stored as computed, with no cast).
    qk_norm: RMS-normalize every q and k head first (rms_norm_torch's rounding; the sum of squares
    in another order, so within an ulp of the separate norm, not bit-identical to it)."""
    check_rotary_store_inputs(q, k, v, key_cache, value_cache, qk_norm)
    num_tokens, num_heads, head_dim = q.shape
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    norms = (qk_norm.q_weight, qk_norm.k_weight, qk_norm.eps) if qk_norm is not None else (q, k, 0.0)
    if num_tokens:
        num_kv_heads, pdl = k.shape[1], pdl_enabled(q.device)
        _rotary_store_kv_kernel[(num_tokens,)](
            q, q_out, k, v, key_cache, value_cache, positions, slot_mapping, cos_sin_cache, *norms,
            q.stride(0), q.stride(1), q_out.stride(0), q_out.stride(1),
            k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
            value_cache.stride(0), value_cache.stride(1), value_cache.stride(2), cos_sin_cache.stride(0),
            NUM_Q_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads,
            BLOCK_QH=triton.next_power_of_2(num_heads), BLOCK_KH=triton.next_power_of_2(num_kv_heads),
            HALF=head_dim // 2, BLOCK_HALF=triton.next_power_of_2(head_dim // 2),
            PAGE_SIZE=key_cache.shape[1], HAS_NORM=qk_norm is not None, PDL=pdl, num_warps=4,
            **NO_FP_FUSION,
            launch_pdl=pdl,
        )  # fmt: skip
    return q_out
