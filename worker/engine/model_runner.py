"""ModelRunner: turns a ScheduledBatch into a StepPlan, runs it on this rank, returns fp32 logits.

Inputs are flat over the batch: the new tokens of every sequence concatenated, their positions,
the cache slot of each, each sequence's block table and context length (AttentionMetadata).
Only sequences whose chunk reaches their last token produce logits (prefill chunks that stop
mid-prompt only fill the cache), and so do prompt positions being scored (return_prompt_logprobs).
A step with sequences that asked for their routing (return_routed_experts) also copies the expert
ids of their new positions to the host (routing.py); with TP every rank routes alike (the router
is replicated), so rank 0's ids are the worker's.
With tensor parallelism, rank 0 broadcasts each plan (RunStep, worker/tp/commands.py) before
running it, and followers run the plans they receive (worker/tp/follower.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

from epochserve.worker.engine.cuda_graphs import DecodeGraphs
from epochserve.worker.engine.host_buffers import PinnedStaging
from epochserve.worker.engine.kv_cache import KVCachePool
from epochserve.worker.engine.routing import PendingRouting, RoutedSpan
from epochserve.worker.engine.scheduler import ScheduledBatch, prompt_positions_to_score
from epochserve.worker.engine.sequence import Sequence
from epochserve.worker.engine.staged_forward import logits_on_twins
from epochserve.worker.engine.step_inputs import build_step_inputs
from epochserve.worker.engine.step_plan import StepPlan
from epochserve.worker.layers.parallel import SINGLE_DEVICE, TensorParallel
from epochserve.worker.models.llama import LlamaForCausalLM
from epochserve.worker.tp.commands import CaptureTwinGraphs, CommandChannel, Heartbeat, RunStep, Shutdown

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0  # rank 0 proves it is alive to idle followers at least this often


class ScoredPrompt(NamedTuple):
    """Prompt positions of one sequence whose next-token logprob a step computes."""

    seq: Sequence
    positions: range


@dataclass(frozen=True, slots=True)
class StepLogits:
    """One step's fp32 logits on rank 0. Created by ModelRunner.execute, consumed by Engine."""

    sampling: torch.Tensor  # [len(seqs), vocab]: each sampling sequence's last position
    seqs: list[Sequence]
    prompt: torch.Tensor  # [sum of len(positions), vocab]: the scored prompt positions, in order
    scored: list[ScoredPrompt]
    routing: PendingRouting | None = None  # when a sequence asked for its routed experts


class ModelRunner:
    def __init__(
        self,
        model: LlamaForCausalLM,
        kv_pool: KVCachePool,
        device: torch.device,
        channel: CommandChannel | None = None,
        tp: TensorParallel = SINGLE_DEVICE,
    ) -> None:
        self.model = model
        self.kv_pool = kv_pool
        self.block_size = kv_pool.block_size
        self.device = device
        self.channel = channel  # rank 0 of a TP group of size > 1: where it sends each step
        self.tp = tp
        self.graphs: DecodeGraphs | None = None  # set by RankSetup.make_runner (CUDA only)
        # This rank's staged twins when a step can run on them (drain=overlap; set by the engine or
        # the follower to its RankWeightUpdater.runnable_twins).
        self.twins: Callable[[], dict[str, torch.Tensor] | None] = lambda: None
        self.twin_graphs: DecodeGraphs | None = None  # self.graphs' sibling on the twins, once captured
        self._last_graphs: DecodeGraphs | None = None  # the graphs of the last graph decode step
        self.staging = PinnedStaging(device)

    # ---- rank 0 ------------------------------------------------------------------------------
    def plan(
        self, batch: ScheduledBatch, on_twins: bool = False
    ) -> tuple[StepPlan, list[Sequence], list[ScoredPrompt]]:
        """The plan of one step, the sequences that sample (in logits row order), and the prompt
        positions it scores (their logits rows follow the sampling rows). on_twins: run on the
        staged twins (decode steps on graphs captured on them, the rest eagerly)."""
        if self._fits_graphs(batch):
            return self._graph_decode_plan(batch, on_twins), batch.seqs, []
        plan = StepPlan(on_twins=on_twins)
        sampling_seqs: list[Sequence] = []
        scored: list[ScoredPrompt] = []
        scored_rows: list[int] = []
        bs = self.block_size
        for i, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            start = seq.num_computed_tokens
            end = start + num_new
            positions = prompt_positions_to_score(seq, num_new)
            if positions:
                first_row = plan.query_start_loc[-1] - start
                scored_rows.extend(first_row + p for p in positions)
                scored.append(ScoredPrompt(seq, positions))
            plan.input_ids.extend(seq.tokens_between(start, end))
            plan.positions.extend(range(start, end))
            table = seq.block_table
            plan.slot_mapping.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            plan.query_start_loc.append(plan.query_start_loc[-1] + num_new)
            plan.seq_lens.append(end)
            plan.block_tables.append(list(table))
            if batch.samples(i):
                plan.logits_indices.append(plan.query_start_loc[-1] - 1)
                sampling_seqs.append(seq)
        plan.logits_indices += scored_rows
        return plan, sampling_seqs, scored

    def _fits_graphs(self, batch: ScheduledBatch) -> bool:
        """A decode step a captured graph can run: one new token per sequence, each its last."""
        graphs = self.graphs
        if graphs is None or not 0 < len(batch.seqs) <= graphs.max_batch:
            return False
        return all(
            num_new == 1
            and seq.num_computed_tokens + 1 == seq.num_tokens <= graphs.max_seq_len
            and seq.table_row is not None
            and seq.table_row < graphs.num_table_rows
            for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True)
        )

    def _graph_decode_plan(self, batch: ScheduledBatch, on_twins: bool) -> StepPlan:
        """Each sequence's last token, length and table row; only the blocks its row lacks."""
        plan = StepPlan(on_twins=on_twins)
        updates = plan.table_updates
        for seq in batch.seqs:
            plan.input_ids.append(
                seq.output_token_ids[-1] if seq.output_token_ids else seq.prompt_token_ids[-1]
            )
            plan.seq_lens.append(seq.num_tokens)
            row = seq.table_row
            assert row is not None
            plan.table_rows.append(row)
            table = seq.block_table
            for column in range(seq.num_synced_blocks, len(table)):
                updates += (row, column, table[column])
            seq.num_synced_blocks = len(table)
        plan.logits_indices.extend(range(len(batch.seqs)))
        return plan

    def execute(
        self, batch: ScheduledBatch, input_ids: torch.Tensor | None = None, on_twins: bool = False
    ) -> StepLogits:
        """Queue one step on every rank; returns its fp32 logits, split by use.

        input_ids: a decode step's tokens already on the device (the previous step's samples, when
        the engine runs a step ahead); they replace the plan's placeholders. Single rank only.
        on_twins: every rank runs it on its staged twins (drain=overlap's new version)."""
        plan, sampling_seqs, scored = self.plan(batch, on_twins)
        if input_ids is not None:
            assert len(plan.input_ids) == len(plan.seq_lens) == input_ids.numel(), "a decode step only"
            plan.input_ids_on_device = True
        if self.channel is not None:
            self.channel.send(RunStep(plan))
        logits = self.run_plan(plan, input_ids)
        num_sampling = len(sampling_seqs)
        routing = self._routing_rows(batch, plan.is_graph_decode)
        return StepLogits(logits[:num_sampling], sampling_seqs, logits[num_sampling:], scored, routing)

    @torch.inference_mode()
    def _routing_rows(self, batch: ScheduledBatch, graph_decode: bool) -> PendingRouting | None:
        """Queue the copy to the host of the routing rows this step's sequences asked for: their new
        positions not logged yet (a recompute after a preemption logs nothing twice). One copy,
        queued before the next step can overwrite the ids (a graph replay, a run-ahead step)."""
        if all(seq.routing is None for seq in batch.seqs):  # the usual step: nobody asked
            return None
        spans: list[RoutedSpan] = []
        rows: list[int] = []
        first_row = 0  # the step's tokens are each sequence's new positions, concatenated
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            start = seq.num_computed_tokens
            if seq.routing is not None and max(start, seq.routing.length) < start + num_new:
                first = max(start, seq.routing.length)
                spans.append(RoutedSpan(seq, first, start + num_new - first))
                rows.extend(range(first_row + first - start, first_row + num_new))
            first_row += num_new
        if not spans:
            return None
        graphs = self._last_graphs
        if graph_decode and graphs is not None:
            routed = graphs.last_routed_experts(len(batch.seqs))
        else:
            routed = self.model.last_routed_experts()
        assert routed is not None, "routed experts asked of a dense model"
        if len(rows) < routed.shape[0]:
            routed = routed.index_select(0, _on_device(rows, self.device))
        host = routed.to(torch.int32).to("cpu", non_blocking=routed.is_cuda)
        copied = None
        if routed.is_cuda:
            copied = torch.cuda.Event()
            copied.record()
        return PendingRouting(host, copied, spans)

    def heartbeat(self) -> None:
        """Called by rank 0 while idle: keeps followers' waits short of the collective timeout."""
        if self.channel is not None and time.monotonic() - self.channel.last_send >= HEARTBEAT_SECONDS:
            self.channel.send(Heartbeat())

    def prepare_twins(self) -> None:
        """Called by rank 0 once a staged version is verified: every rank captures the decode graphs
        of its twins now, between two steps before the commit, rather than at the new version's
        first decode step, where the capture (~0.65 s on an H100) stalled both versions' steps."""
        if self.channel is not None:
            self.channel.send(CaptureTwinGraphs())
        self.capture_twin_graphs()

    def shutdown_followers(self) -> None:
        if self.channel is not None:
            self.channel.send(Shutdown())

    # ---- every rank ----------------------------------------------------------------------------
    @torch.inference_mode()
    def run_plan(self, plan: StepPlan, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 logits [len(plan.logits_indices), vocab]: from a captured CUDA graph for decode steps that
        fit one, else eagerly. `input_ids` (device) replaces the plan's, as in execute."""
        if plan.input_ids_on_device and self.tp.size > 1:
            input_ids = self._share_input_ids(input_ids, len(plan.input_ids))
        if plan.is_graph_decode:
            self._last_graphs = self._twin_graphs() if plan.on_twins else self.graphs
            assert self._last_graphs is not None, "a graph decode plan on a rank without graphs"
            return self._last_graphs.run(plan, input_ids)
        inputs = build_step_inputs(plan, self.device, self.staging)
        if input_ids is not None:
            inputs.input_ids = input_ids
        if plan.on_twins:
            return logits_on_twins(self.model, self._runnable_twins(), inputs, self.kv_pool.layers)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_pool.layers, inputs.meta)
        logits = self.model.compute_logits(hidden.index_select(0, inputs.logits_indices))
        return logits.float()

    def _runnable_twins(self) -> dict[str, torch.Tensor]:
        twins = self.twins()
        if twins is None:
            raise RuntimeError(f"rank {self.tp.rank}: a step planned on staged twins, none can run here")
        return twins

    def capture_twin_graphs(self) -> None:
        """Capture the decode graphs of the runnable twins unless they have them already (a reused
        buffer set); nothing without graphs (CPU) or runnable twins."""
        if self.graphs is not None and self.twins() is not None:
            self._twin_graphs()

    def _twin_graphs(self) -> DecodeGraphs:
        """Decode graphs on the current twins, captured by prepare_twins or else on their first
        decode step. Every rank captures between the same two steps, so TP collectives pair up.
        The updater reuses the twins' buffers for later versions: one capture serves them all."""
        twins = self._runnable_twins()
        if self.twin_graphs is None or self.twin_graphs.weights is not twins:
            assert self.graphs is not None, "graph decode on twins without live graphs"
            self.twin_graphs = None  # the old twins' graphs go before the new capture allocates
            graphs = self.graphs.on_weights(twins)
            graphs.capture()
            self.twin_graphs = graphs
        return self.twin_graphs

    def _share_input_ids(self, input_ids: torch.Tensor | None, count: int) -> torch.Tensor:
        """Rank 0's device-side input tokens on every rank: queued like the model's collectives,
        in the same order on every rank, without a host wait."""
        if input_ids is None:  # a follower
            input_ids = torch.empty(count, dtype=torch.int64, device=self.device)
        dist.broadcast(input_ids, src=0, group=self.tp.group)
        return input_ids


def _on_device(values: list[int], device: torch.device) -> torch.Tensor:
    """int64 indices on the device without a host wait (through pinned memory on CUDA)."""
    host = torch.tensor(values, dtype=torch.int64)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host
