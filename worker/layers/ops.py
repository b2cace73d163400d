"""KernelOps: the tensor functions the model layers call, chosen once per engine.

`TorchOps` is the PyTorch reference path (CPU, and the oracle for tests). On CUDA the engine uses
Triton kernels with the same signatures (kernels/*_triton.py); `batch_invariant` swaps in kernels
whose per-row results do not depend on the batch. Layers hold the ops object they were built with,
so the choice is explicit and no module-global state decides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from epochserve.kernels.activation import silu_and_mul_torch
from epochserve.kernels.paged_attention import paged_attention_torch, write_kv_cache_torch
from epochserve.kernels.rmsnorm import add_rms_norm_torch, rms_norm_torch
from epochserve.kernels.rotary import apply_rotary_torch

if TYPE_CHECKING:
    from epochserve.worker.layers.attention import AttentionMetadata

# On CPU, MKL multiplies 1-3 rows with a gemv-like kernel whose reduction order differs from its
# gemm kernel's, so a token's result would depend on how many other tokens share its step. Padding
# to this many rows keeps every row on the gemm path: a request computes the same numbers alone or
# in a batch (tests/integration/worker/test_smollm2_engine.py checks it).
CPU_MIN_ROWS = 8


@dataclass(frozen=True, slots=True)
class TorchOps:
    """Pure PyTorch: the reference every other path is checked against."""

    name: str = "torch"

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.shape[0]
        if x.device.type != "cpu" or x.dim() != 2 or rows >= CPU_MIN_ROWS:
            return F.linear(x, weight, bias)
        padded = torch.cat([x, x.new_zeros(CPU_MIN_ROWS - rows, x.shape[1])])
        return F.linear(padded, weight, bias)[:rows]

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return rms_norm_torch(x, weight, eps)

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm_torch(x, residual, weight, eps)

    def rotary(self, x: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
        return apply_rotary_torch(x, positions, cos_sin)

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return silu_and_mul_torch(gate_up)

    def write_kv(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        write_kv_cache_torch(key, value, key_cache, value_cache, slot_mapping)

    def attention(
        self,
        query: torch.Tensor,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        return paged_attention_torch(
            query, key_cache, value_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc, scale
        )


TORCH_OPS = TorchOps()
