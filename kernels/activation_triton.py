"""SiLU-and-mul in Triton (reference: silu_and_mul_torch in kernels/activation.py)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _silu_and_mul(gate, up):
    """silu(gate) * up, rounded where `F.silu(gate) * up` rounds: silu to gate's dtype, then the
    product. Shared by this module's kernel and gemv_triton's fused prologue."""
    g = gate.to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    return (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)


@triton.jit
def _silu_and_mul_kernel(
    out_ptr,  # [num_tokens, intermediate] contiguous
    gate_up_ptr,  # [num_tokens, 2 * intermediate], gate first
    stride_in,
    intermediate,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < intermediate
    gate = tl.load(gate_up_ptr + token * stride_in + cols, mask=mask, other=0.0)
    up = tl.load(gate_up_ptr + token * stride_in + intermediate + cols, mask=mask, other=0.0)
    tl.store(out_ptr + token * intermediate + cols, _silu_and_mul(gate, up), mask=mask)


def silu_and_mul_triton(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [num_tokens, 2 * intermediate] (gate first) → silu(gate) * up: [num_tokens, intermediate]."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"expected [num_tokens, 2 * intermediate], got {tuple(gate_up.shape)}")
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    num_tokens, intermediate = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((num_tokens, intermediate), dtype=gate_up.dtype, device=gate_up.device)
    if num_tokens:
        grid = (num_tokens, triton.cdiv(intermediate, _BLOCK))
        _silu_and_mul_kernel[grid](out, gate_up, gate_up.stride(0), intermediate, BLOCK=_BLOCK, num_warps=4)
    return out
