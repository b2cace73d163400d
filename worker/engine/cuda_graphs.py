"""DecodeGraphs: decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step (one new token per sequence, every sequence sampling) of b sequences runs the graph
of the smallest captured bucket B >= b over static buffers: the first b rows hold the real
sequences; rows b..B-1 are padding that writes its key/value into a scratch block nobody reads
and attends over that block alone. Everything else (prefill, mixed steps, larger batches) runs
eagerly. Graphs read the weights at their fixed addresses, so in-place weight swaps need no
re-capture; they hold a private memory pool sized at capture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from epochserve.worker.engine.host_buffers import PinnedStaging, pack_int64, padded_rows
from epochserve.worker.engine.kv_cache import KVCachePool
from epochserve.worker.engine.step_plan import StepPlan
from epochserve.worker.layers.attention import AttentionMetadata
from epochserve.worker.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: KVCachePool,
        max_seq_len: int,
        scratch_block: int,
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
    ) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.max_seq_len = max_seq_len  # the attention kernels plan for this bound in every graph
        self.buckets = tuple(sorted(buckets))
        self.max_batch = self.buckets[-1]
        self.max_blocks = -(-max_seq_len // kv_pool.block_size)
        self.scratch_slot = scratch_block * kv_pool.block_size
        self.scratch_block = scratch_block
        device = next(model.parameters()).device
        b, m = self.max_batch, self.max_blocks

        def zeros(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.input_ids, self.positions, self.slots = zeros(b), zeros(b), zeros(b)
        self.block_tables = zeros(b, m, dtype=torch.int32)
        self.seq_lens = zeros(b, dtype=torch.int32)
        self.query_start_loc = torch.arange(b + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.staging = PinnedStaging(device)
        self.pool: Any = None  # the graphs' shared memory pool, made by the first capture

    def can_run(self, plan: StepPlan) -> bool:
        num_seqs = len(plan.seq_lens)
        return (
            0 < num_seqs <= self.max_batch
            and len(plan.input_ids) == num_seqs
            and len(plan.logits_indices) == num_seqs
            and max(plan.seq_lens) <= self.max_seq_len
        )

    def _meta(self, batch: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:batch],
            block_tables=self.block_tables[:batch],
            seq_lens=[],
            query_start_loc=[],
            seq_lens_tensor=self.seq_lens[:batch],
            query_start_loc_tensor=self.query_start_loc[: batch + 1],
            max_query_len=1,
            max_seq_len=self.max_seq_len,  # kernels plan for the capture-time bound
        )

    def _forward(self, batch: int) -> torch.Tensor:
        hidden = self.model(
            self.input_ids[:batch], self.positions[:batch], self.kv_pool.layers, self._meta(batch)
        )
        return self.model.compute_logits(hidden).float()

    @torch.inference_mode()
    def capture(self, before_each: Callable[[int], None] | None = None) -> None:
        """Capture one graph per bucket, largest first (its pool then serves the smaller ones).
        `before_each(batch)`: TP ranks synchronize here so that they capture in lockstep."""
        self._pad_rows(0, self.max_batch)
        for batch in reversed(self.buckets):
            if before_each is not None:
                before_each(batch)
            self._forward(batch)  # warm up: autotuning and lazy allocations stay out of the graph
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.logits[batch] = self._forward(batch)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[batch] = graph
        torch.cuda.synchronize()
        logger.info("captured %d decode graphs (batch sizes %s)", len(self.graphs), list(self.buckets))

    def _pad_rows(self, start: int, end: int) -> None:
        """Rows [start, end): a token at position 0 of a one-token sequence in the scratch block."""
        if start >= end:
            return
        self.input_ids[start:end] = 0
        self.positions[start:end] = 0
        self.slots[start:end] = self.scratch_slot
        self.block_tables[start:end] = self.scratch_block
        self.seq_lens[start:end] = 1

    def run(self, plan: StepPlan, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits [num_seqs, vocab] of a decode step, from the smallest bucket that fits;
        `input_ids` (on the device) replaces the plan's tokens."""
        n = len(plan.seq_lens)
        batch = next(b for b in self.buckets if b >= n)
        # Only the columns this step uses: the kernels read a row no further than its seq_len.
        width = max(len(t) for t in plan.block_tables)
        parts = [plan.input_ids, plan.positions, plan.slot_mapping, plan.seq_lens,
                 padded_rows(plan.block_tables, width, self.scratch_block)]  # fmt: skip
        values = self.staging.to_device(pack_int64(parts, 4 * n + n * width))
        ids, positions, slots, lens, tables = values.split([n, n, n, n, n * width])
        self.input_ids[:n].copy_(ids if input_ids is None else input_ids)
        self.positions[:n].copy_(positions)
        self.slots[:n].copy_(slots)
        self.seq_lens[:n].copy_(lens)
        self.block_tables[:n, :width].copy_(tables.view(n, width))
        self._pad_rows(n, batch)
        self.graphs[batch].replay()
        return self.logits[batch][:n]
