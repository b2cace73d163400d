"""topk_route_triton (kernels/moe_topk_triton.py) against topk_route, the PyTorch reference: the same
expert ids in the same order, weights within fp32 rounding (the exp differs by a few ulps)."""

from __future__ import annotations

import pytest
import torch

from epochserve.kernels.fused_moe import topk_route
from epochserve.kernels.moe_topk_triton import topk_route_triton
from epochserve.worker.layers.ops import TritonOps


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize(("tokens", "experts", "top_k"), [(1, 128, 8), (5, 60, 4), (33, 8, 2), (3, 10, 10)])
def test_matches_the_reference(tokens: int, experts: int, top_k: int, renormalize: bool) -> None:
    gen = torch.Generator().manual_seed(tokens * experts + top_k)
    logits = torch.randn(tokens, experts, generator=gen) * 3
    weights, ids = topk_route_triton(logits, top_k, renormalize)
    ref_weights, ref_ids = topk_route(logits, top_k, renormalize)
    assert ids.dtype == ref_ids.dtype and torch.equal(ids, ref_ids)
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, ref_weights, rtol=1e-5, atol=1e-7)
    if renormalize:
        torch.testing.assert_close(weights.sum(-1), torch.ones(tokens), rtol=1e-6, atol=0)


def test_ties_go_to_the_lower_expert_id_and_bad_shapes_are_refused() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0, 2.0, 2.0]])
    _, ids = topk_route_triton(logits, 3, renormalize=True)
    assert ids.tolist() == [[1, 3, 4]]
    with pytest.raises(ValueError, match="expected logits"):
        topk_route_triton(logits, 6, renormalize=True)


def test_triton_ops_route_through_it() -> None:
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(1))
    got, want = TritonOps().moe_topk(logits, 2, True), topk_route_triton(logits, 2, True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
