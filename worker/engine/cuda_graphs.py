"""DecodeGraphs: decode steps replayed from CUDA graphs, one graph per batch-size bucket.

A decode step (one new token per sequence, every sequence sampling) of b sequences runs the graph
of the smallest captured bucket B >= b over static buffers: the first b rows hold the real
sequences; rows b..B-1 are padding that writes its key/value into a scratch block nobody reads
and attends over that block alone. Everything else (prefill, mixed steps, larger batches) runs
eagerly. Graphs read the weights at their fixed addresses, so in-place weight swaps need no
re-capture; they hold a private memory pool sized at capture.

Staged twins (drain=overlap): `on_weights(twins)` makes a sibling whose graphs read the twins
instead of the live parameters. It shares the static inputs, the device block table and the memory
pool (replays run one after another on one stream) and is captured once per set of twin buffers;
the weight updater reuses those buffers from one rollout to the next, so the capture is paid once.

Routing replay: each MoE layer's expert ids are outputs of the captured graph like the logits
(held per bucket in `topk_ids`, rewritten by every replay), so decode steps that return routed
experts replay the same graphs; the runner copies the rows out after the replay, before the next
step is queued.

Block tables stay on the device between steps: each sequence owns a row of `table` (its
`table_row`, handed out by the BlockManager) and a step sends only the blocks added since the last
one (a decode step adds one every block_size tokens), plus each sequence's row, length and token.
Inside the graph, positions are seq_len - 1, the block tables a gather of the rows, and the slots
a lookup in them: the host's work per step no longer grows with the context.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

import torch

from epochserve.worker.engine.host_buffers import PinnedStaging, pack_int64
from epochserve.worker.engine.kv_cache import KVCachePool
from epochserve.worker.engine.staged_forward import run_on_weights
from epochserve.worker.engine.step_plan import StepPlan
from epochserve.worker.layers.attention import AttentionMetadata
from epochserve.worker.models.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256)
_SMALL_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
MAX_GRAPH_BATCH = 256


def decode_buckets(max_num_seqs: int, step: int = 32) -> tuple[int, ...]:
    """The batch sizes to capture: the small ones, then every `step` above 64, up to the first that
    holds max_num_seqs (a forward pass never has more rows, an overlap's included) and at most
    MAX_GRAPH_BATCH (larger passes run eagerly, as they always have). Each pass runs in the smallest
    bucket that fits, so padding averages about step / 2 rows a pass above 64, and an overlap pays it
    twice a step (one pass per version). max_num_seqs 256 with step 32 gives DEFAULT_BUCKETS."""
    if step < 1:
        raise ValueError(f"the bucket step must be >= 1, got {step}")
    candidates = [*_SMALL_BUCKETS, *range(64 + step, MAX_GRAPH_BATCH, step), MAX_GRAPH_BATCH]
    largest = next(b for b in candidates if b >= min(max_num_seqs, MAX_GRAPH_BATCH))
    return tuple(b for b in candidates if b <= largest)


class DecodeGraphs:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: KVCachePool,
        max_seq_len: int,
        scratch_block: int,
        num_table_rows: int,
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
    ) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.block_size = kv_pool.block_size
        self.max_seq_len = max_seq_len  # the attention kernels plan for this bound in every graph
        self.buckets = tuple(sorted(buckets))
        self.max_batch = self.buckets[-1]
        self.max_blocks = -(-max_seq_len // kv_pool.block_size)
        self.scratch_block = scratch_block
        self.num_table_rows = num_table_rows  # rows for sequences; one more row is the padding's
        device = next(model.parameters()).device
        b = self.max_batch

        def zeros(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        self.table = zeros(num_table_rows + 1, self.max_blocks, dtype=torch.int32)
        self.table[num_table_rows] = scratch_block
        self.input_ids, self.rows = zeros(b), zeros(b)
        self.seq_lens = zeros(b, dtype=torch.int32)
        self.query_start_loc = torch.arange(b + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.topk_ids: dict[int, list[torch.Tensor]] = {}  # per bucket: each MoE layer's, [bucket, k]
        self.last_batch = 0  # the bucket of the last replay
        self.staging = PinnedStaging(device)
        self.pool: Any = None  # the graphs' shared memory pool, made by the first capture
        self.weights: dict[str, torch.Tensor] | None = None  # what the graphs read; None: the live ones

    def on_weights(self, weights: dict[str, torch.Tensor]) -> DecodeGraphs:
        """Uncaptured graphs over `weights` (parameter name → tensor, e.g. staged twins) that share
        this one's static inputs, block table and pool. Capture after this one."""
        sibling = copy.copy(self)
        sibling.weights = weights
        sibling.graphs, sibling.logits, sibling.topk_ids = {}, {}, {}
        return sibling

    def _forward(self, batch: int) -> torch.Tensor:
        """The captured work: inputs from the static buffers and the device block table."""
        positions = self.seq_lens[:batch].long() - 1

        def logits() -> torch.Tensor:
            meta = self._meta(batch, positions)
            hidden = self.model(self.input_ids[:batch], positions, self.kv_pool.layers, meta)
            return self.model.compute_logits(hidden).float()

        return logits() if self.weights is None else run_on_weights(self.model, self.weights, logits)

    def _meta(self, batch: int, positions: torch.Tensor) -> AttentionMetadata:
        """Block tables gathered from the rows, each new token's slot looked up in them."""
        tables = self.table.index_select(0, self.rows[:batch])  # [batch, max_blocks] int32
        blocks = tables.gather(1, (positions // self.block_size)[:, None])[:, 0].long()
        return AttentionMetadata(
            slot_mapping=blocks * self.block_size + positions % self.block_size,
            block_tables=tables,
            seq_lens=[],
            query_start_loc=[],
            seq_lens_tensor=self.seq_lens[:batch],
            query_start_loc_tensor=self.query_start_loc[: batch + 1],
            max_query_len=1,
            max_seq_len=self.max_seq_len,  # kernels plan for the capture-time bound
        )

    @torch.inference_mode()
    def capture(self, before_each: Callable[[int], None] | None = None) -> None:
        """Capture one graph per bucket, largest first (its pool then serves the smaller ones).
        `before_each(batch)`: TP ranks synchronize here so that they capture in lockstep."""
        started = time.monotonic()
        self.input_ids.zero_()
        self.seq_lens.fill_(1)
        self.rows.fill_(self.num_table_rows)  # the padding row: position 0 of the scratch block
        for batch in reversed(self.buckets):
            if before_each is not None:
                before_each(batch)
            self._forward(batch)  # warm up: autotuning and lazy allocations stay out of the graph
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.logits[batch] = self._forward(batch)
            self.topk_ids[batch] = self.model.last_topk_ids() or []
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[batch] = graph
        torch.cuda.synchronize()
        on = "the live weights" if self.weights is None else "staged twins"
        buckets = list(self.buckets)
        seconds = time.monotonic() - started
        logger.info(
            "captured %d decode graphs on %s in %.2f s (batch sizes %s)",
            len(self.graphs),
            on,
            seconds,
            buckets,
        )

    def run(self, plan: StepPlan, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits [num_seqs, vocab] of a graph decode plan (ModelRunner.plan), from the
        smallest bucket that fits; `input_ids` (on the device) replaces the plan's tokens."""
        batch = self.stage(plan, input_ids)
        self.graphs[batch].replay()
        self.last_batch = batch
        return self.logits[batch][: len(plan.seq_lens)]

    def last_routed_experts(self, num_seqs: int) -> torch.Tensor | None:
        """The last replay's expert ids [num_seqs, moe layers, top_k] (queued; None: dense model)."""
        ids = self.topk_ids.get(self.last_batch)
        return torch.stack(ids, dim=1)[:num_seqs] if ids else None

    def stage(self, plan: StepPlan, input_ids: torch.Tensor | None = None) -> int:
        """Put a plan's inputs in the static buffers and its new blocks in the table; returns the
        bucket whose graph runs it."""
        n = len(plan.seq_lens)
        batch = next(b for b in self.buckets if b >= n)
        pad = batch - n
        num_updates = len(plan.table_updates)
        # One copy: tokens, lengths and rows padded to the bucket, then the new table entries.
        parts = [plan.input_ids, repeat(0, pad), plan.seq_lens, repeat(1, pad),
                 plan.table_rows, repeat(self.num_table_rows, pad), plan.table_updates]  # fmt: skip
        values = self.staging.to_device(pack_int64(parts, 3 * batch + num_updates))
        ids, lens, rows, updates = values.split([batch, batch, batch, num_updates])
        if num_updates:
            row, column, block = updates.view(-1, 3).unbind(1)
            self.table.index_put_((row, column), block.to(torch.int32))
        self.input_ids[:batch].copy_(ids)
        if input_ids is not None:
            self.input_ids[:n].copy_(input_ids)
        self.seq_lens[:batch].copy_(lens)
        self.rows[:batch].copy_(rows)
        return batch
