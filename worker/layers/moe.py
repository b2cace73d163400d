"""The mixture-of-experts block (Qwen2-MoE, Qwen3-MoE): a router, stacked experts, an optional shared
expert, combined with one all-reduce.

Every rank routes every token itself (the router is replicated and its input is identical on all
ranks), so no routing crosses ranks. Experts are stacked per layer, w13 [experts, 2 * width, hidden]
and w2 [experts, hidden, width]; routing runs behind `ops.norm_then_route` (with the norm before the
router, see DecoderLayer) and dispatch behind `ops.fused_moe` (TorchOps: the PyTorch reference;
TritonOps: kernels/fused_moe_triton.py, or fused_moe_gemv_triton.py for a few tokens, free of host
syncs, so CUDA graphs capture them). Which slice of the experts a rank
holds is an ExpertShard: with tensor parallelism every rank holds every expert and a slice of each
one's width; with expert parallelism (docs/design.md §2) a rank would hold whole experts, a range
of ids. Either way a rank's output is a partial sum over what it holds and the ranks all-reduce it,
so the model code does not change with the sharding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from epochserve.worker.layers.context import LayerContext
from epochserve.worker.layers.linear import RowParallelLinear, column_linear, copy_checked
from epochserve.worker.layers.parallel import TensorParallel
from epochserve.worker.layers.weight_source import WeightSource

# a checkpoint's per-expert tensor: "<prefix>.experts.<id>.<gate_proj|up_proj|down_proj>"
_EXPERT_NAME = re.compile(
    r"^(?P<prefix>.*\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)$"
)
# projection → (our stacked parameter, part of it: gate rows first, then up rows)
_EXPERT_PARAMS = {"gate_proj": ("w13", 0), "up_proj": ("w13", 1), "down_proj": ("w2", 0)}


def expert_param(module_path: str) -> tuple[str, str, tuple[int, int]] | None:
    """For a per-expert checkpoint module path: (our experts module, its parameter, (expert, part))."""
    match = _EXPERT_NAME.match(module_path)
    if match is None:
        return None
    param, part = _EXPERT_PARAMS[match["proj"]]
    return match["prefix"], param, (int(match["expert"]), part)


@dataclass(frozen=True, slots=True)
class ExpertShard:
    """The experts [first, first + count) this rank holds, each's width rows [start, start + width)."""

    first_expert: int
    num_local_experts: int
    width_start: int
    width: int

    @classmethod
    def tensor_parallel(cls, num_experts: int, intermediate: int, tp: TensorParallel) -> ExpertShard:
        width = tp.split(intermediate, "expert MLP width")
        return cls(first_expert=0, num_local_experts=num_experts, width_start=tp.rank * width, width=width)


class StackedExperts(nn.Module):
    """One layer's routed experts, stacked; returns this rank's partial sum (not reduced)."""

    expert_map: torch.Tensor | None  # global expert id → local index, -1: held by another rank

    def __init__(self, num_experts: int, hidden: int, shard: ExpertShard, ctx: LayerContext) -> None:
        super().__init__()
        self.ops = ctx.ops
        self.shard = shard
        local, width = shard.num_local_experts, shard.width
        self.w13 = nn.Parameter(torch.empty(local, 2 * width, hidden, dtype=ctx.dtype), requires_grad=False)
        self.w2 = nn.Parameter(torch.empty(local, hidden, width, dtype=ctx.dtype), requires_grad=False)
        ids = None  # while every expert is local
        if local != num_experts:
            ids = torch.full((num_experts,), -1, dtype=torch.int64)
            ids[shard.first_expert : shard.first_expert + local] = torch.arange(local)
        self.register_buffer("expert_map", ids, persistent=False)

    def load(
        self, param_name: str, source: WeightSource, shard_id: tuple[int, int], out: torch.Tensor
    ) -> None:
        """Copy this rank's slice of one expert's gate, up or down tensor into `out` (w13 or w2)."""
        expert, part = shard_id
        local, s = expert - self.shard.first_expert, self.shard
        if not 0 <= local < s.num_local_experts:
            return  # another rank's expert
        if param_name == "w13":  # [width, hidden] rows of gate (part 0) or up (part 1)
            rows = out[local, part * s.width : (part + 1) * s.width]
            copy_checked(rows, source.read(0, s.width_start, s.width), f"expert {expert} {param_name}")
        else:  # down: [hidden, width] columns
            copy_checked(out[local], source.read(1, s.width_start, s.width), f"expert {expert} {param_name}")

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """This rank's partial output for the router's choice (weights fp32, global expert ids)."""
        return self.ops.fused_moe(x, self.w13, self.w2, weights, ids, self.expert_map)


class ReplicatedLinear(nn.Module):
    """A small linear every rank holds whole (the router, the shared expert's gate)."""

    def __init__(self, input_size: int, output_size: int, ctx: LayerContext) -> None:
        super().__init__()
        self.ops = ctx.ops
        self.weight = nn.Parameter(torch.empty(output_size, input_size, dtype=ctx.dtype), requires_grad=False)

    def load(self, param_name: str, source: WeightSource, shard_id: None, out: torch.Tensor) -> None:
        copy_checked(out, source.read(), param_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight)


class SharedExpert(nn.Module):
    """A dense gated MLP beside the routed experts (Qwen2-MoE); returns this rank's partial sum."""

    def __init__(self, hidden: int, width: int, ctx: LayerContext) -> None:
        super().__init__()
        self.gate_up_proj = column_linear(hidden, [width, width], False, ctx)
        self.down_proj = RowParallelLinear(width, hidden, False, ctx, silu_and_mul_first=True, reduce=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x))


class SparseMoeBlock(nn.Module):
    """x → Σ_k w_k · expert_k(x) [+ sigmoid(g · x) · shared(x)]: softmax routing over all experts in
    fp32, top-k, optionally renormalized (norm_topk_prob); experts summed in fp32."""

    def __init__(
        self,
        hidden: int,
        num_experts: int,
        top_k: int,
        width: int,
        renormalize: bool,
        shared_width: int,
        ctx: LayerContext,
    ) -> None:
        super().__init__()
        self.ops, self.tp = ctx.ops, ctx.tp
        self.top_k, self.renormalize = top_k, renormalize
        self.gate = ReplicatedLinear(hidden, num_experts, ctx)  # the router
        shard = ExpertShard.tensor_parallel(num_experts, width, ctx.tp)
        self.experts = StackedExperts(num_experts, hidden, shard, ctx)
        self.shared_expert = SharedExpert(hidden, shared_width, ctx) if shared_width else None
        self.shared_expert_gate = ReplicatedLinear(hidden, 1, ctx) if shared_width else None
        # the last forward's expert ids [num_tokens, top_k] (what routing replay will return)
        self.last_topk_ids: torch.Tensor | None = None

    def from_routing(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The block's output for x given its router's choice (the decoder layer routes together
        with the norm before, see DecoderLayer): weights fp32 and expert ids [n, top_k]."""
        out, self.last_topk_ids = self.experts(x, weights, ids), ids
        if self.shared_expert is not None and self.shared_expert_gate is not None:
            shared = self.shared_expert(x)
            # The gate is per token and replicated: scaling each rank's partial scales the sum. Its
            # sigmoid runs over the row's full width: on [n, 1] a CPU row would take the vector or
            # the scalar code path by its index, and its bits would follow the batch size.
            gate = torch.sigmoid(self.shared_expert_gate(x).expand_as(shared))
            out = out + gate * shared
        return self.tp.all_reduce(out)
