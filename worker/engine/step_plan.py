"""StepPlan: everything every TP rank needs to run one engine step.

Rank 0 owns the scheduler and sampler. Each step it builds a StepPlan (plain lists: token ids,
positions, slots, block tables); with tensor parallelism it broadcasts the plan to the followers
(worker/tp/commands.py, RunStep), which run exactly that plan. Aborts, cancellations and
preemptions only change what rank 0 puts in the next plan, so ranks can never diverge.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class StepPlan:
    """Created by ModelRunner.plan on rank 0, consumed by ModelRunner.run_plan on every rank."""

    input_ids: list[int] = field(default_factory=list)  # [num_tokens]
    positions: list[int] = field(default_factory=list)  # [num_tokens]
    slot_mapping: list[int] = field(default_factory=list)  # [num_tokens]
    block_tables: list[list[int]] = field(default_factory=list)  # [num_seqs, max_blocks_per_seq]
    seq_lens: list[int] = field(default_factory=list)  # [num_seqs]
    query_start_loc: list[int] = field(default_factory=lambda: [0])  # [num_seqs + 1]
    logits_indices: list[int] = field(default_factory=list)  # [num_sampling_seqs]
    # A run-ahead decode step: input_ids are placeholders; the tokens (the previous step's samples,
    # still on rank 0's device) reach every rank by a broadcast over the TP group.
    input_ids_on_device: bool = False
    # A decode step for the CUDA graphs (ModelRunner.plan): each sequence's row of the device block
    # table, and the blocks added to rows since the last such step, as flat (row, column, block)
    # triples. The graph derives positions, slots and block tables from these and seq_lens, so
    # positions, slot_mapping and block_tables stay empty.
    table_rows: list[int] = field(default_factory=list)  # [num_seqs]
    table_updates: list[int] = field(default_factory=list)  # [3 * num_new_blocks]
    # drain=overlap: run on the staged version's twins, not the live weights (staged_forward.py)
    on_twins: bool = False

    @property
    def is_graph_decode(self) -> bool:
        return bool(self.table_rows)
