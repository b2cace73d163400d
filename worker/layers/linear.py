"""Linear layers that know how they are split across tensor-parallel ranks.

Column-parallel layers split the output features (each rank computes its slice; no communication);
row-parallel layers split the input features and all-reduce the partial sums. Merged layers (QKV,
gate-up) hold several checkpoint tensors side by side; `load` takes the shard a tensor belongs to.
Each rank reads only its slice of every checkpoint tensor (WeightSource.read with a range).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from epochserve.worker.layers.context import LayerContext
from epochserve.worker.layers.weight_source import WeightSource


@dataclass(frozen=True, slots=True)
class OutputShard:
    """Where one checkpoint tensor's rows go: rows [start, start + size) of the full tensor are
    stored at rows [offset, offset + size) of this rank's merged weight."""

    start: int
    size: int
    offset: int


def copy_checked(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if tuple(dst.shape) != tuple(src.shape):
        raise ValueError(
            f"{name}: checkpoint slice has shape {tuple(src.shape)}, expected {tuple(dst.shape)}"
        )
    dst.copy_(src)


class MergedColumnLinear(nn.Module):
    """y = x Wᵀ + b, where W stacks several checkpoint tensors along the output dim (split per rank)."""

    def __init__(
        self, input_size: int, shards: dict[str | int, OutputShard], bias: bool, ctx: LayerContext
    ) -> None:
        super().__init__()
        self.ops = ctx.ops
        self.shards = shards
        dtype = ctx.dtype
        out = sum(s.size for s in shards.values())
        self.weight = nn.Parameter(torch.empty(out, input_size, dtype=dtype), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out, dtype=dtype), requires_grad=False) if bias else None

    def load(self, param_name: str, source: WeightSource, shard_id: str | int, out: torch.Tensor) -> None:
        """Copy this rank's rows of checkpoint tensor `shard_id` into `out` (the parameter or its twin)."""
        shard = self.shards[shard_id]
        if param_name == "bias" and self.bias is None:
            raise ValueError("checkpoint has a bias for a layer built without one")
        rows = out[shard.offset : shard.offset + shard.size]
        copy_checked(rows, source.read(0, shard.start, shard.size), param_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight, self.bias)


def column_linear(
    input_size: int, output_sizes: list[int], bias: bool, ctx: LayerContext
) -> MergedColumnLinear:
    """Column-parallel linear over several stacked outputs (e.g. gate and up), each split evenly."""
    tp = ctx.tp
    shards: dict[str | int, OutputShard] = {}
    offset = 0
    for index, full in enumerate(output_sizes):
        size = tp.split(full, "output features")
        shards[index] = OutputShard(start=tp.rank * size, size=size, offset=offset)
        offset += size
    return MergedColumnLinear(input_size, shards, bias, ctx)


def qkv_linear(
    hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool, ctx: LayerContext
) -> MergedColumnLinear:
    """The merged q/k/v projection. Query heads split evenly; kv heads split when there are at least
    as many as ranks, otherwise each rank holds the one kv head its query heads use (replicated)."""
    tp = ctx.tp
    heads = tp.split(num_heads, "attention heads")
    if num_kv_heads >= tp.size:
        kv_heads = tp.split(num_kv_heads, "key/value heads")
        kv_first = tp.rank * kv_heads
    else:
        if tp.size % num_kv_heads:
            raise ValueError(f"TP size {tp.size} is not a multiple of the {num_kv_heads} key/value heads")
        kv_heads, kv_first = 1, tp.rank * num_kv_heads // tp.size
    q = OutputShard(start=tp.rank * heads * head_dim, size=heads * head_dim, offset=0)
    k = OutputShard(start=kv_first * head_dim, size=kv_heads * head_dim, offset=q.size)
    v = OutputShard(start=kv_first * head_dim, size=kv_heads * head_dim, offset=q.size + k.size)
    return MergedColumnLinear(hidden_size, {"q": q, "k": k, "v": v}, bias, ctx)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local W_localᵀ) + b, with W's input features split across ranks.

    silu_and_mul_first: the input is a gate-up projection's output and x = silu(gate) * up (the
    MLP's down projection), computed inside the product where the kernels allow.
    reduce=False returns this rank's partial sum (no bias), for a caller that adds other partials
    first and all-reduces once (the MoE block's shared expert)."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool,
        ctx: LayerContext,
        silu_and_mul_first: bool = False,
        reduce: bool = True,
    ) -> None:
        super().__init__()
        tp, dtype = ctx.tp, ctx.dtype
        if bias and not reduce:
            raise ValueError("a row-parallel layer that does not reduce cannot add its bias")
        self.tp = tp
        self.reduce = reduce
        self.ops = ctx.ops
        self.silu_and_mul_first = silu_and_mul_first
        self.input_local = tp.split(input_size, "input features")
        self.weight = nn.Parameter(
            torch.empty(output_size, self.input_local, dtype=dtype), requires_grad=False
        )
        self.bias = nn.Parameter(torch.empty(output_size, dtype=dtype), requires_grad=False) if bias else None

    def load(self, param_name: str, source: WeightSource, shard_id: None, out: torch.Tensor) -> None:
        if param_name == "bias":
            copy_checked(out, source.read(), "bias")
            return
        copy_checked(out, source.read(1, self.tp.rank * self.input_local, self.input_local), "weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.silu_and_mul_first:
            partial = self.ops.silu_and_mul_linear(x, self.weight)
        else:
            partial = self.ops.linear(x, self.weight)
        if not self.reduce:
            return partial
        y = self.tp.all_reduce(partial)
        return y + self.bias if self.bias is not None else y
