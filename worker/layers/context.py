"""LayerContext: what every layer is built with — its TP slice, dtype and kernel implementations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from epochserve.worker.layers.ops import TORCH_OPS, TorchOps
from epochserve.worker.layers.parallel import SINGLE_DEVICE, TensorParallel


@dataclass(frozen=True, slots=True)
class LayerContext:
    tp: TensorParallel = SINGLE_DEVICE
    dtype: torch.dtype = torch.float32  # weights and activations
    ops: TorchOps = TORCH_OPS  # the tensor functions layers call (TorchOps or a Triton subclass)
