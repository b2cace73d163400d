"""SiLU-and-mul, the gated activation of Llama-style MLPs, and the down projection that follows it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_and_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up: [num_tokens, 2 * intermediate] (gate first) → silu(gate) * up: [num_tokens, intermediate]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul_linear_torch(gate_up: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The MLP's down projection of its activation: silu_and_mul(gate_up) @ weight.T."""
    return F.linear(silu_and_mul_torch(gate_up), weight)
