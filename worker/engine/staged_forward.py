"""Run one step's model on a staged version's twins instead of the live parameters.

drain=overlap (docs/design.md §5): after a rollout commits, sequences of the new version run on the
staged twins while the old version's sequences finish on the live weights, each in its own forward
pass of the same step. The live parameters are never written during that time. Decode steps of the
new version replay CUDA graphs captured on the twins (cuda_graphs.py, DecodeGraphs.on_weights);
the rest runs eagerly here.

`torch.func.functional_call` swaps every parameter of the model for its twin for the length of one
call; `strict=True` makes a twin that is missing an error instead of a silent fall-back to the live
parameter, which would mix versions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from epochserve.worker.engine.step_inputs import StepInputs
from epochserve.worker.layers.attention import LayerKVCache
from epochserve.worker.models.llama import LlamaForCausalLM


class _Reparametrized(nn.Module):
    """The model as a submodule, so that one functional_call covers whatever `fn` does with it."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        return fn(*args)


def run_on_weights(
    model: LlamaForCausalLM, weights: dict[str, torch.Tensor], fn: Callable[..., torch.Tensor], *args: Any
) -> torch.Tensor:
    """fn(*args), during which `model`'s parameters are `weights` (parameter name → tensor)."""
    state = {f"model.{name}": tensor for name, tensor in weights.items()}
    state.update({f"model.{name}": buf for name, buf in model.named_buffers()})  # rope tables, maps
    return torch.func.functional_call(_Reparametrized(model), state, (fn, *args), strict=True)


def logits_on_twins(
    model: LlamaForCausalLM, twins: dict[str, torch.Tensor], inputs: StepInputs, caches: list[LayerKVCache]
) -> torch.Tensor:
    """fp32 logits of one step computed with `twins` (parameter name → tensor) as the weights."""

    def logits() -> torch.Tensor:
        hidden = model(inputs.input_ids, inputs.positions, caches, inputs.meta)
        return model.compute_logits(hidden.index_select(0, inputs.logits_indices))

    return run_on_weights(model, twins, logits).float()
