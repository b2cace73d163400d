"""What rank 0 of a tensor-parallel worker tells its followers, and the channel it tells them over.

Rank 0 owns the scheduler, the sampler and the rollout agent; a follower decides nothing. Rank 0
broadcasts each command over a CPU (gloo) group and runs it itself; every follower receives the
same commands in the same order (worker/tp/follower.py) and runs them too:

    RunStep(plan)        run the model over the batch the StepPlan describes
    StageWeights(v, ..)  start staging version v in the background (verified by a collective)
    SwapWeights(v)       make the staged v live now, then fingerprint it (a collective)
    DropWeights()        abandon the staged or staging version
    FingerprintWeights() fingerprint the live weights (a collective)
    CaptureTwinGraphs()  capture the decode graphs of the verified twins now (drain=overlap)
    Heartbeat()          nothing to run; proves rank 0 is alive
    Shutdown()           followers leave their loop and exit 0

Between steps rank 0 sends heartbeats, so an idle follower never mistakes silence for failure, and
a dead peer shows up within one heartbeat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist

from epochserve.worker.engine.step_plan import StepPlan


@dataclass(frozen=True, slots=True)
class RunStep:
    plan: StepPlan


@dataclass(frozen=True, slots=True)
class StageWeights:
    version: int
    source: str  # a checkpoint directory or a broadcast URL (weights/broadcast.py)
    manifest_checksum: str | None  # the rollout's, checked against the source's manifest
    broadcast_rank_base: int | None = None  # staging from a broadcast: this worker's first global rank


@dataclass(frozen=True, slots=True)
class SwapWeights:
    version: int


@dataclass(frozen=True, slots=True)
class DropWeights:
    pass


@dataclass(frozen=True, slots=True)
class FingerprintWeights:
    pass


@dataclass(frozen=True, slots=True)
class CaptureTwinGraphs:
    pass


@dataclass(frozen=True, slots=True)
class Heartbeat:
    pass


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


WeightCommand = StageWeights | SwapWeights | DropWeights | FingerprintWeights
RankCommand = RunStep | WeightCommand | CaptureTwinGraphs | Heartbeat | Shutdown


class CommandChannel:
    """Broadcasts commands from rank 0 over a CPU process group (gloo), in every rank's same order."""

    def __init__(self, cpu_group: Any, rank: int) -> None:
        self.cpu_group = cpu_group
        self.rank = rank
        self.last_send = time.monotonic()  # rank 0: when it last sent (heartbeats fill the gaps)

    def send(self, command: RankCommand) -> None:
        assert self.rank == 0, "only rank 0 sends commands"
        dist.broadcast_object_list([command], src=0, group=self.cpu_group)
        self.last_send = time.monotonic()

    def receive(self) -> RankCommand:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.cpu_group)
        command = box[0]
        assert isinstance(command, RankCommand)
        return command
