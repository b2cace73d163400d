"""Run one step's model on a staged version's twins instead of the live parameters.

drain=overlap (docs/design.md §5): after a rollout commits, sequences of the new version run on the
staged twins while the old version's sequences finish on the live weights, each in its own forward
pass of the same step. The live parameters are never written during that time (captured CUDA graphs
keep pointing at them), so the new version's passes run eagerly.

`torch.func.functional_call` swaps every parameter of the model for its twin for the length of one
call; `strict=True` makes a twin that is missing an error instead of a silent fall-back to the live
parameter, which would mix versions.
"""

from __future__ import annotations

import torch
from torch import nn

from epochserve.worker.engine.step_inputs import StepInputs
from epochserve.worker.layers.attention import LayerKVCache
from epochserve.worker.models.llama import LlamaForCausalLM


class _Logits(nn.Module):
    """The model and its output projection as one module, so one functional_call covers both."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: StepInputs, caches: list[LayerKVCache]) -> torch.Tensor:
        hidden = self.model(inputs.input_ids, inputs.positions, caches, inputs.meta)
        return self.model.compute_logits(hidden.index_select(0, inputs.logits_indices))


def logits_on_twins(
    model: LlamaForCausalLM, twins: dict[str, torch.Tensor], inputs: StepInputs, caches: list[LayerKVCache]
) -> torch.Tensor:
    """fp32 logits of one step computed with `twins` (parameter name → tensor) as the weights."""
    wrapper = _Logits(model)
    state = {f"model.{name}": tensor for name, tensor in twins.items()}
    state.update({f"model.{name}": buf for name, buf in model.named_buffers()})  # rope tables, maps
    logits = torch.func.functional_call(wrapper, state, (inputs, caches), strict=True)
    return logits.float()
