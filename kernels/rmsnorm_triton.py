"""RMSNorm and fused residual-add + RMSNorm in Triton (references: kernels/rmsnorm.py).

One program per row, the whole row in registers: the reduction's shape depends only on the hidden
size, so a row's result never depends on how many rows share the launch (batch-invariant as is).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from epochserve.kernels.pdl import pdl_enabled, pdl_prologue


@triton.jit
def _rms_norm_kernel(
    out_ptr,  # [num_rows, hidden] contiguous
    summed_ptr,  # [num_rows, hidden] contiguous (HAS_RESIDUAL)
    x_ptr,  # rows addressed as (row // inner) * stride_x0 + (row % inner) * stride_x1
    residual_ptr,
    weight_ptr,  # [hidden]
    eps,
    inner,
    stride_x0,
    stride_x1,
    stride_r0,
    stride_r1,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    PDL: tl.constexpr,
):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < HIDDEN
    x = tl.load(x_ptr + (row // inner) * stride_x0 + (row % inner) * stride_x1 + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r_offs = (row // inner) * stride_r0 + (row % inner) * stride_r1 + cols
        residual = tl.load(residual_ptr + r_offs, mask=mask, other=0.0)
        # Round the sum to the input dtype as `x + residual` does before normalizing it.
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)
        tl.store(summed_ptr + row * HIDDEN + cols, x, mask=mask)
    x32 = x.to(tl.float32)
    variance = tl.sum(x32 * x32, axis=0) / HIDDEN
    # Hugging Face order: normalize in fp32, cast to the input dtype, then multiply by the weight.
    normed = (x32 * tl.math.rsqrt(variance + eps)).to(x.dtype)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * HIDDEN + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _row_view(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """(tensor, inner, stride0, stride1): rows of x as (row // inner, row % inner) over ≤ 2 dims."""
    if x.stride(-1) != 1 or x.dim() > 3:
        x = x.contiguous()
    if x.dim() == 3:
        return x, x.shape[1], x.stride(0), x.stride(1)
    x2 = x.reshape(-1, x.shape[-1])
    return x2, 1, x2.stride(0), 0


def _launch(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = x.shape[-1]
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    summed = torch.empty(x.shape, dtype=x.dtype, device=x.device) if residual is not None else None
    num_rows = x.numel() // hidden if hidden else 0
    if num_rows == 0:
        return out, summed
    xv, inner, sx0, sx1 = _row_view(x)
    # Same shape as x, so the same (row // inner, row % inner) split applies.
    rv, _, sr0, sr1 = _row_view(residual) if residual is not None else (xv, inner, sx0, sx1)
    block = triton.next_power_of_2(hidden)
    # Warps by row width only (never by row count): keeps the reduction tree batch-invariant.
    num_warps = min(16, max(1, block // 512))
    pdl = pdl_enabled(x.device)
    _rms_norm_kernel[(num_rows,)](
        out, summed if summed is not None else out, xv, rv, weight, eps, inner, sx0, sx1, sr0, sr1,
        HIDDEN=hidden, BLOCK=block, HAS_RESIDUAL=residual is not None, PDL=pdl, num_warps=num_warps,
        launch_pdl=pdl,
    )  # fmt: skip
    return out, summed


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [..., hidden] (last dim contiguous; rows may be strided, e.g. q heads of a qkv slice);
    weight: [hidden]. Returns a new contiguous tensor of x's dtype promoted with weight's."""
    return _launch(x, None, weight, eps)[0]


def add_rms_norm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass; x and residual [..., hidden], same shape."""
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"x {tuple(x.shape)} {x.dtype} and residual {tuple(residual.shape)} differ")
    out, summed = _launch(x, residual, weight, eps)
    assert summed is not None
    return out, summed
