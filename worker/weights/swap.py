"""Swap a staged version live, in place, and fingerprint the live weights.

The swap copies every staged twin into its live parameter (`copy_`): parameters keep their
addresses, so captured CUDA graphs stay valid. It runs between engine steps, never inside one.
The fingerprint summarizes a worker's live weights (every rank's parameters, in rank order), so
two workers of the same layout serving the same version report the same fingerprint (I4).
"""

from __future__ import annotations

import torch

from epochserve.worker.layers.parallel import TensorParallel
from epochserve.worker.models.llama import LlamaForCausalLM
from epochserve.worker.weights.fingerprint import fingerprint
from epochserve.worker.weights.staging import StagedWeights


@torch.no_grad()
def swap_in(model: LlamaForCausalLM, staged: StagedWeights) -> None:
    """Copy the staged twins into the live parameters (in place; addresses unchanged)."""
    params = dict(model.named_parameters())
    if set(params) != set(staged.buffers):
        raise RuntimeError("staged buffers do not match the model's parameters")
    for name, param in params.items():
        param.data.copy_(staged.buffers[name], non_blocking=True)
    if params and next(iter(params.values())).device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def live_fingerprint(model: LlamaForCausalLM, tp: TensorParallel) -> str:
    """The fingerprint of the live parameters; a collective on TP > 1."""
    return fingerprint(dict(model.named_parameters()), tp)
