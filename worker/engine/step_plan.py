"""StepPlan: everything every TP rank needs to run one engine step, and how rank 0 sends it.

Rank 0 owns the scheduler and sampler. Each step it builds a StepPlan (plain lists: token ids,
positions, slots, block tables) and broadcasts it over a CPU (gloo) group; ranks > 0 run exactly
that plan. Aborts, cancellations and preemptions only change what rank 0 puts in the next plan, so
ranks can never diverge. Between steps rank 0 sends heartbeats, so an idle follower never mistakes
silence for failure, and a dead peer shows up within one heartbeat.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist


class PlanKind(enum.Enum):
    STEP = "step"  # run the model over the batch described by the plan
    HEARTBEAT = "heartbeat"  # nothing to run; proves rank 0 is alive
    SHUTDOWN = "shutdown"  # followers leave their loop and exit 0
    STAGE = "stage"  # start staging `version` from `source` in the background
    SWAP = "swap"  # make the staged `version` live now, then fingerprint (a collective)
    DROP = "drop"  # abandon the staged or staging version
    FINGERPRINT = "fingerprint"  # compute the live weights' fingerprint (a collective)


@dataclass(slots=True)
class StepPlan:
    """Created by ModelRunner.plan on rank 0, consumed by ModelRunner.run_plan on every rank."""

    kind: PlanKind = PlanKind.STEP
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
    # Weight updates (STAGE, SWAP): the version, and where STAGE reads it from.
    version: int = 0
    source: str = ""
    manifest_checksum: str | None = None
    broadcast_rank_base: int | None = None  # STAGE from a broadcast: this worker's first global rank


class PlanChannel:
    """Broadcasts plans from rank 0 over a CPU process group (gloo), in every rank's same order."""

    def __init__(self, cpu_group: Any, rank: int) -> None:
        self.cpu_group = cpu_group
        self.rank = rank

    def send(self, plan: StepPlan) -> None:
        assert self.rank == 0, "only rank 0 sends plans"
        dist.broadcast_object_list([plan], src=0, group=self.cpu_group)

    def receive(self) -> StepPlan:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        plan = box[0]
        assert isinstance(plan, StepPlan)
        return plan
