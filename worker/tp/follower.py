"""A follower rank (> 0) of a tensor-parallel worker: load its shards, then run rank 0's commands.

Started by TPLauncher in a fresh (spawned) process. It holds no scheduler and no sampler: it runs
exactly the commands rank 0 broadcasts (worker/tp/commands.py), so it can never disagree with rank 0
about what runs. Any error (a collective that fails or times out, a dead peer) ends the process with
a non-zero code.
"""

from __future__ import annotations

import logging
import sys

import torch.distributed as dist

from epochserve.lifetime import die_with_parent
from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.model_runner import ModelRunner
from epochserve.worker.engine.model_setup import setup_rank
from epochserve.worker.tp.commands import (
    CaptureTwinGraphs,
    CommandChannel,
    DropWeights,
    FingerprintWeights,
    Heartbeat,
    RunStep,
    Shutdown,
    StageWeights,
    SwapWeights,
)
from epochserve.worker.tp.group import init_tp_group, rank_config
from epochserve.worker.weights.control import run_weight_command
from epochserve.worker.weights.updater import RankWeightUpdater

logger = logging.getLogger(__name__)

# Longest a follower waits for its staging thread to finish after rank 0 saw the shared verdict.
STAGING_END_WAIT_SECONDS = 60.0


def follower_main(
    config: EngineConfig, rank: int, world_size: int, init_method: str, timeout_seconds: float
) -> None:
    die_with_parent()
    # Followers stay quiet (STYLE.md): warnings and errors only.
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s %(levelname)s rank{rank} %(name)s: %(message)s"
    )
    config = rank_config(config, rank)
    try:
        tp = init_tp_group(rank, world_size, init_method, config.torch_device, timeout_seconds)
        setup = setup_rank(config, tp)
        runner = setup.make_runner(config, tp)
        updater = setup.make_updater(config, tp)
        runner.twins = updater.runnable_twins  # plans of drain=overlap's new version run on them
        follow(CommandChannel(tp.cpu_group, rank), runner, updater)
    except Exception:
        logger.exception("TP rank %d failed", rank)
        sys.exit(1)
    dist.destroy_process_group()


def follow(channel: CommandChannel, runner: ModelRunner, updater: RankWeightUpdater) -> None:
    """Run every command rank 0 broadcasts until it says Shutdown.

    A collective that fails (a rank died) or exceeds the group's timeout raises out of here;
    the follower process then exits non-zero.
    """
    assert channel.rank > 0
    while True:
        match channel.receive():
            case Shutdown():
                return
            case RunStep(plan=plan):
                runner.run_plan(plan)
            case Heartbeat():
                pass
            case CaptureTwinGraphs():
                # Rank 0 sends this once its staging reached the verdict, a collective: this rank's
                # thread is past it too, perhaps not yet done. Capturing without its twins while rank 0
                # captures would leave rank 0's collectives unpaired.
                updater.wait(STAGING_END_WAIT_SECONDS)
                runner.capture_twin_graphs()
            case StageWeights() | SwapWeights() | DropWeights() | FingerprintWeights() as command:
                run_weight_command(updater, command)
