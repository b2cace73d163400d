"""The MoE router's choice in one launch, in Triton (reference: topk_route in kernels/fused_moe.py).

Per token: softmax over all experts in fp32, the top_k experts by descending weight, and optionally
their weights rescaled to sum to 1. PyTorch takes five launches for this (softmax, topk, sum,
divide, and a copy); a decode step at batch 1 of a 48-layer MoE model is bound by launches as much
as by bytes, so one program per token does it all: the row's logits in registers, k rounds of
"take the largest, mask it out" (ties go to the lower expert id), then the rescale.

Numbers: the same formulas in fp32 as the reference (exp(x - max) / Σ); Triton's exp differs from
torch's by a few ulps, so weights agree to ~1e-6 relative and ids wherever two experts' weights are
not within that of each other.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _route_row(
    logits_ptr, row, num_experts, stride_l,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, RENORMALIZE: tl.constexpr,
):  # fmt: skip
    """One token's choice: (fp32 weights [K_PAD], int64 expert ids [K_PAD]); slots past TOP_K hold 0.
    The router's arithmetic, apart from the kernel's loads and stores."""
    experts = tl.arange(0, E_PAD)
    valid = experts < num_experts
    logits = tl.load(logits_ptr + row * stride_l + experts, mask=valid, other=-float("inf")).to(tl.float32)
    shifted = tl.exp(logits - tl.max(logits, 0))  # padding: exp(-inf) = 0
    probs = shifted / tl.sum(shifted, 0)
    slots = tl.arange(0, K_PAD)
    chosen_w = tl.zeros([K_PAD], dtype=tl.float32)
    chosen_id = tl.zeros([K_PAD], dtype=tl.int64)
    left = tl.where(valid, probs, -1.0)  # below every probability: never chosen
    for j in tl.static_range(TOP_K):
        best = tl.max(left, 0)
        best_id = tl.min(tl.where(left == best, experts, E_PAD), 0)  # the lowest id among ties
        chosen_w = tl.where(slots == j, best, chosen_w)
        chosen_id = tl.where(slots == j, best_id.to(tl.int64), chosen_id)
        left = tl.where(experts == best_id, -1.0, left)
    if RENORMALIZE:
        chosen_w = chosen_w / tl.sum(chosen_w, 0)  # the padding slots hold 0
    return chosen_w, chosen_id


@triton.jit
def _topk_route_kernel(
    logits_ptr,  # [tokens, E] router logits
    weights_ptr,  # [tokens, TOP_K] fp32 out
    ids_ptr,  # [tokens, TOP_K] int64 out
    num_experts, stride_l,
    TOP_K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr, RENORMALIZE: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    chosen_w, chosen_id = _route_row(
        logits_ptr, row, num_experts, stride_l, TOP_K=TOP_K, K_PAD=K_PAD, E_PAD=E_PAD, RENORMALIZE=RENORMALIZE
    )
    slots = tl.arange(0, K_PAD)
    out = row * TOP_K + slots
    tl.store(weights_ptr + out, chosen_w, mask=slots < TOP_K)
    tl.store(ids_ptr + out, chosen_id, mask=slots < TOP_K)


def slot_pad(top_k: int) -> int:
    """K_PAD: a token's top_k slots padded to a power of two (at least 2, for tl.arange)."""
    return max(2, triton.next_power_of_2(top_k))


def route_pads(top_k: int, num_experts: int) -> tuple[int, int]:
    """(K_PAD, E_PAD) of _route_row for this router."""
    return slot_pad(top_k), max(16, triton.next_power_of_2(num_experts))


def topk_route_triton(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights fp32 [n, k], expert ids int64 [n, k]) by descending weight: topk_route's contract."""
    if router_logits.dim() != 2 or not 0 < top_k <= router_logits.shape[1]:
        raise ValueError(f"expected logits [n, experts >= {top_k}], got {tuple(router_logits.shape)}")
    tokens, experts = router_logits.shape
    logits = router_logits if router_logits.stride(-1) == 1 else router_logits.contiguous()
    weights = torch.empty((tokens, top_k), dtype=torch.float32, device=logits.device)
    ids = torch.empty((tokens, top_k), dtype=torch.int64, device=logits.device)
    k_pad, e_pad = route_pads(top_k, experts)
    if tokens:
        _topk_route_kernel[(tokens,)](
            logits, weights, ids, experts, logits.stride(0), TOP_K=top_k, K_PAD=k_pad, E_PAD=e_pad,
            RENORMALIZE=renormalize, num_warps=1 if experts <= 256 else 4,
        )  # fmt: skip
    return weights, ids
