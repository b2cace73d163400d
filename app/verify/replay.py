"""Routing replay on the trainer's side: run a transformers mixture-of-experts model with the experts
the engine returned forced at every MoE layer and position, so that the recompute is of the very
network that sampled (the fix for router disagreement between engine and trainer).

Each MoE block of transformers' Qwen3-MoE and Qwen2-MoE asks its router (`mlp.gate`, a
Qwen3MoeTopKRouter / Qwen2MoeTopKRouter) for (router_logits, top-k weights, top-k ids) and hands the
weights and ids to its experts. A forward hook on each router replaces the ids with the forced ones
and the weights with what the router itself would give those experts: the fp32 softmax of its
logits at the forced ids, renormalized over them when the config sets `norm_topk_prob`. The router
logits pass through untouched, so `output_router_logits` still reports the model's own router.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from epochserve.app.verify.routing import returned_by_position

# transformers' top-k routers whose forward returns (router_logits, top-k weights, top-k ids)
REPLAYABLE_ROUTERS = ("Qwen3MoeTopKRouter", "Qwen2MoeTopKRouter")


class ReplayError(ValueError):
    """The forced routing does not fit the model (layers, top_k, expert ids or positions)."""


def moe_routers(model: nn.Module) -> list[nn.Module]:
    """The model's MoE routers in layer order (a dense layer has none): the engine's layer order."""
    return [m for m in model.modules() if type(m).__name__ in REPLAYABLE_ROUTERS]


def routing_to_replay(
    num_prompt: int, prompt_rows: Sequence[Sequence[int]], token_rows: Sequence[Sequence[int]], top_k: int
) -> np.ndarray:
    """A sample's returned routing as forced_routing's ids for positions 0 .. num_prompt +
    len(token_rows) - 2 (every input that produced a token). ReplayError when one is missing."""
    try:
        positions, ids = returned_by_position(num_prompt, prompt_rows, token_rows, top_k)
    except ValueError as exc:  # rows of unequal length: not layers x top_k ids each
        raise ReplayError(f"malformed routed experts ({exc})") from None
    num_inputs = num_prompt + len(token_rows) - 1
    if top_k < 1 or not np.array_equal(positions, np.arange(num_inputs)):
        raise ReplayError(
            f"the routing covers {len(positions)} of the {num_inputs} input positions; replay needs "
            f"all of them (prompt_routed_experts and routed_experts of a return_routed_experts request)"
        )
    return ids


@contextmanager
def forced_routing(model: nn.Module, expert_ids: np.ndarray | torch.Tensor) -> Iterator[None]:
    """Within the block, every forward of `model` routes position p of MoE layer l to
    expert_ids[p, l] (the engine's ids by descending weight, [positions, moe layers, top_k]).
    The forward must be of one sequence of exactly `positions` tokens. Raises ReplayError when the
    ids do not fit the model; the hooks are removed on leaving, whatever happened."""
    routers = moe_routers(model)
    if not routers:
        raise ReplayError(f"{type(model).__name__} has no router that can be replayed ({REPLAYABLE_ROUTERS})")
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(expert_ids), dtype=torch.long, device=device)
    _check_fits(ids, routers)
    handles = [
        router.register_forward_hook(_forcing_hook(ids[:, layer])) for layer, router in enumerate(routers)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_fits(ids: torch.Tensor, routers: list[nn.Module]) -> None:
    if ids.dim() != 3 or ids.shape[1] != len(routers):
        raise ReplayError(
            f"routing of shape {tuple(ids.shape)} does not fit the model's {len(routers)} MoE layers "
            f"(expected [positions, {len(routers)}, top_k])"
        )
    first: Any = routers[0]  # transformers' router: plain int attributes
    top_k, num_experts = int(first.top_k), int(first.num_experts)
    if ids.shape[2] != top_k:
        raise ReplayError(f"routing has {ids.shape[2]} experts per layer; the model routes to {top_k}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_experts):
        raise ReplayError(f"an expert id is outside [0, {num_experts})")


def _forcing_hook(layer_ids: torch.Tensor) -> Any:
    """A forward hook for one router: its output with layer_ids [positions, top_k] as the choice."""

    def hook(router: nn.Module, inputs: Any, output: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        router_logits = output[0]  # [positions, experts]
        if router_logits.shape[0] != layer_ids.shape[0]:
            raise ReplayError(
                f"the forward runs {router_logits.shape[0]} positions; "
                f"the routing covers {layer_ids.shape[0]}"
            )
        # as the router computes its top-k weights, at the forced experts instead of its own top-k
        probs = torch.softmax(router_logits, dtype=torch.float, dim=-1)
        weights = probs.gather(-1, layer_ids)
        if router.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return router_logits, weights.to(router_logits.dtype), layer_ids

    return hook
