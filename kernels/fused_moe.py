"""Mixture-of-experts: top-k routing and the experts' grouped MLP, in plain PyTorch.

The reference fused_moe_triton (kernels/fused_moe_triton.py) is checked against: one grouped GEMM for
gate-up with SiLU-and-mul, one for down, the top-k weights applied in the combine. This one reads
the group sizes back to the host (`.tolist()`), so no CUDA graph can capture it. Shapes:
  w13 [num_local_experts, 2 * intermediate, hidden]: each expert's gate rows, then its up rows
  w2  [num_local_experts, hidden, intermediate]
Expert ids are global; `expert_map` (global id → local index, -1 when another rank holds it) lets a
rank hold a subset of the experts (expert parallelism) with the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from epochserve.kernels.activation import silu_and_mul_torch

Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def topk_route(
    router_logits: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights fp32 [n, k], expert ids int64 [n, k]), in descending order of weight: softmax over
    all experts in fp32, top-k, and optionally the k weights rescaled to sum to 1."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_moe_torch(
    x: torch.Tensor,  # [n, hidden]
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,  # [n, k] fp32
    topk_ids: torch.Tensor,  # [n, k] global expert ids
    expert_map: torch.Tensor | None = None,  # [num_experts] int64: local index or -1
    linear: Linear = F.linear,
) -> torch.Tensor:
    """Σ_k weight_k · expert_{id_k}(x) over this rank's experts: [n, hidden] in x's dtype.

    Tokens are grouped by expert, each group goes through its expert's gate-up → SiLU-and-mul →
    down, and the weighted outputs are summed in fp32, one expert after another in ascending id: a
    token's sum runs in the order of its own experts whatever else is in the batch (with a
    batch-invariant `linear`, so are its bits)."""
    num_tokens, top_k = topk_ids.shape
    num_local = w13.shape[0]
    local = expert_map[topk_ids] if expert_map is not None else topk_ids
    flat = local.reshape(-1)
    # (token, slot) pairs sorted by local expert; pairs for other ranks' experts sort last, unused
    order = torch.argsort(torch.where(flat < 0, num_local, flat), stable=True)
    counts = torch.bincount(flat[flat >= 0], minlength=num_local).tolist()
    flat_weights = topk_weights.reshape(-1)
    out = torch.zeros(num_tokens, x.shape[1], dtype=torch.float32, device=x.device)
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start : start + count]
        start += count
        tokens = pairs // top_k
        hidden = linear(silu_and_mul_torch(linear(x[tokens], w13[expert])), w2[expert])
        out.index_add_(0, tokens, hidden.float() * flat_weights[pairs, None])
    return out.to(x.dtype)
