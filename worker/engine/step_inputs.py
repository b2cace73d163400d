"""Device tensors of one step: a StepPlan's lists copied to the device in one transfer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from epochserve.worker.engine.host_buffers import PinnedStaging, pack_int64, padded_rows
from epochserve.worker.engine.step_plan import StepPlan
from epochserve.worker.layers.attention import AttentionMetadata


@dataclass(slots=True)
class StepInputs:
    """Created by build_step_inputs on every rank, consumed by the model's forward."""

    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [num_sampling_seqs] int64


def build_step_inputs(plan: StepPlan, device: torch.device, staging: PinnedStaging) -> StepInputs:
    """Pack every integer list of the plan into one host tensor, copy it once, slice on the device."""
    num_seqs = len(plan.seq_lens)
    max_blocks = max(len(table) for table in plan.block_tables)
    lists = [plan.input_ids, plan.positions, plan.slot_mapping, plan.logits_indices, plan.seq_lens,
             plan.query_start_loc]  # fmt: skip
    sizes = [len(values) for values in lists] + [num_seqs * max_blocks]
    host = pack_int64([*lists, padded_rows(plan.block_tables, max_blocks, 0)], sum(sizes))
    input_ids, positions, slots, logits_indices, seq_lens, query_start_loc, tables = staging.to_device(
        host
    ).split(sizes)
    meta = AttentionMetadata(
        slot_mapping=slots,
        block_tables=tables.view(num_seqs, max_blocks).to(torch.int32),
        seq_lens=plan.seq_lens,
        query_start_loc=plan.query_start_loc,
        seq_lens_tensor=seq_lens.to(torch.int32),
        query_start_loc_tensor=query_start_loc.to(torch.int32),
        max_query_len=max(
            b - a for a, b in zip(plan.query_start_loc, plan.query_start_loc[1:], strict=False)
        ),
        max_seq_len=max(plan.seq_lens),
    )
    return StepInputs(input_ids, positions, meta, logits_indices)
