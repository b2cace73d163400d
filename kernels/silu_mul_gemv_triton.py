"""The MLP's down projection of a few rows with SiLU-and-mul in its prologue (reference:
silu_and_mul_linear_torch in kernels/activation.py).

Why: a decode step of a few sequences reads the down projection's whole weight for a handful of
rows, so it is a memory-bound matrix-vector product; computing silu(gate) * up while loading
it drops the activation kernel and its output's round trip (one launch per layer, whose fixed
cost rivals what a batch-1 step moves). The activation is rounded to the input dtype exactly
where silu_and_mul_triton rounds it; products accumulate in fp32 (CUDA-core FMAs: a few rows give
the tensor cores nothing to do) and the result is rounded once, as a matmul's is.

Each program owns BLOCK_N output features of every row and walks K in BLOCK_K steps, summing each
step's products in a fixed tree: no split-K, nothing is summed across programs, and a row's result
does not depend on the other rows.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rows up to this many take the fused kernel (decode steps of small batches); past it, the
# activation's exp work repeated by every program would no longer hide behind the weight's loads.
MAX_ROWS = 4


@triton.jit
def _silu_and_mul_gemv_kernel(
    out_ptr,  # [M, N]
    gate_up_ptr,  # [M, 2 * K], gate first
    weight_ptr,  # [N, K]
    M, N, K, stride_gm, stride_wn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_M)
    col_ok = cols < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        w = tl.load(
            weight_ptr + cols[:, None] * stride_wn + ks[None, :],
            mask=col_ok[:, None] & k_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        for m in tl.static_range(BLOCK_M):
            a_mask = k_ok & (tl.full([BLOCK_K], m, tl.int32) < M)  # padded rows (M=3 → 4) load zeros
            gate = tl.load(gate_up_ptr + m * stride_gm + ks, mask=a_mask, other=0.0)
            up = tl.load(gate_up_ptr + m * stride_gm + K + ks, mask=a_mask, other=0.0)
            g = gate.to(tl.float32)
            # As silu_and_mul_triton: silu rounded to the input dtype, then the product rounded too.
            silu = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
            act = (silu.to(tl.float32) * up.to(tl.float32)).to(gate.dtype).to(tl.float32)
            part = tl.sum(w * act[None, :], axis=1)  # [BLOCK_N]: this K step of row m
            acc = tl.where(rows[:, None] == m, acc + part[None, :], acc)
    out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(rows[:, None] < M) & col_ok[None, :])


def silu_and_mul_gemv_triton(
    gate_up: torch.Tensor,  # [M, 2 * K], M <= MAX_ROWS
    weight: torch.Tensor,  # [N, K]
    *,
    block_n: int = 32,
    block_k: int = 256,
    num_warps: int = 4,
    num_stages: int = 4,
) -> torch.Tensor:
    """(silu(gate) * up) @ weight.T for a few rows: [M, N] in gate_up's dtype. Tile arguments are
    for benchmarks; the defaults are what the engine runs."""
    if gate_up.dim() != 2 or weight.dim() != 2 or gate_up.shape[1] != 2 * weight.shape[1]:
        raise ValueError(f"expected [M, 2K] and [N, K], got {tuple(gate_up.shape)}, {tuple(weight.shape)}")
    if gate_up.shape[0] > MAX_ROWS:
        raise ValueError(f"at most {MAX_ROWS} rows, got {gate_up.shape[0]}")
    if gate_up.dtype != weight.dtype:
        raise ValueError(f"gate_up is {gate_up.dtype} but the weight is {weight.dtype}")
    if gate_up.stride(-1) != 1:
        gate_up = gate_up.contiguous()
    if weight.stride(-1) != 1:
        raise ValueError("the weight needs a contiguous last dimension")
    (m, _), (n, k) = gate_up.shape, weight.shape
    out = torch.empty((m, n), dtype=gate_up.dtype, device=gate_up.device)
    if m:
        _silu_and_mul_gemv_kernel[(triton.cdiv(n, block_n),)](
            out, gate_up, weight, m, n, k, gate_up.stride(0), weight.stride(0), out.stride(0),
            BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, BLOCK_K=block_k,
            num_warps=num_warps, num_stages=num_stages,
        )  # fmt: skip
    return out
