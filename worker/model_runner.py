"""ModelRunner: turns a ScheduledBatch into flat tensors, runs the model, returns fp32 logits.

Inputs are flat over the batch: the new tokens of every sequence concatenated, their positions,
the cache slot of each, each sequence's block table and context length (AttentionMetadata).
Only sequences whose chunk reaches their last token produce logits (prefill chunks that stop
mid-prompt only fill the cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from epochserve.worker.kv_cache import KVCachePool
from epochserve.worker.layers.attention import AttentionMetadata
from epochserve.worker.models.llama import LlamaForCausalLM
from epochserve.worker.scheduler import ScheduledBatch
from epochserve.worker.sequence import Sequence


@dataclass(slots=True)
class ModelInput:
    """Created by ModelRunner.prepare, consumed by ModelRunner.execute."""

    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    meta: AttentionMetadata
    logits_indices: torch.Tensor  # [num_sampling_seqs] row of each sampling sequence's last token
    sampling_seqs: list[Sequence]  # the sequences that get a next token this step, in row order


class ModelRunner:
    def __init__(self, model: LlamaForCausalLM, kv_pool: KVCachePool, device: torch.device) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.block_size = kv_pool.block_size
        self.device = device

    def prepare(self, batch: ScheduledBatch) -> ModelInput:
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_start_loc = [0]
        seq_lens: list[int] = []
        logits_indices: list[int] = []
        sampling_seqs: list[Sequence] = []
        bs = self.block_size
        for i, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            end = start + num_new
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_start_loc.append(query_start_loc[-1] + num_new)
            seq_lens.append(end)
            if batch.samples(i):
                logits_indices.append(query_start_loc[-1] - 1)
                sampling_seqs.append(seq)
        max_blocks = max(len(seq.block_table) for seq in batch.seqs)
        tables = [seq.block_table + [0] * (max_blocks - len(seq.block_table)) for seq in batch.seqs]

        def tensor(values: list, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

        meta = AttentionMetadata(
            slot_mapping=tensor(slots),
            block_tables=tensor(tables, torch.int32),
            seq_lens=seq_lens,
            query_start_loc=query_start_loc,
        )
        return ModelInput(tensor(input_ids), tensor(positions), meta, tensor(logits_indices), sampling_seqs)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[Sequence]]:
        """Run one step; returns (fp32 logits [num_sampling_seqs, vocab], the sampling sequences)."""
        inputs = self.prepare(batch)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_pool.layers, inputs.meta)
        logits = self.model.compute_logits(hidden.index_select(0, inputs.logits_indices))
        return logits.float(), inputs.sampling_seqs
