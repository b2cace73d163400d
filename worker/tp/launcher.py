"""TPLauncher: rank 0 starts the follower ranks of its worker and watches them.

`epochctl worker --tp N` runs rank 0 in the main process; it spawns ranks 1..N-1 as child processes
(multiprocessing "spawn": a fresh interpreter each, as CUDA requires), then joins the same process
group. If any follower exits, `dead_ranks()` says so and the server shuts the worker down with a
non-zero exit. Followers die with rank 0 (PR_SET_PDEATHSIG), so no rank outlives its worker.
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.process import BaseProcess

from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.model_setup import check_head_split
from epochserve.worker.layers.parallel import TensorParallel
from epochserve.worker.models.config import ModelConfig
from epochserve.worker.tp.commands import CommandChannel
from epochserve.worker.tp.follower import follower_main
from epochserve.worker.tp.group import free_loopback_port, init_tp_group, rank_config

logger = logging.getLogger(__name__)


class TPLauncher:
    def __init__(self, config: EngineConfig, world_size: int, timeout_seconds: float) -> None:
        if world_size < 2:
            raise ValueError("TPLauncher is for TP size >= 2")
        self.config = config
        self.world_size = world_size
        self.timeout_seconds = timeout_seconds
        self.followers: list[BaseProcess] = []

    def start(self) -> tuple[EngineConfig, TensorParallel, CommandChannel]:
        """Spawn the followers and join the group as rank 0 (blocks until all ranks joined)."""
        check_head_split(ModelConfig.from_dir(self.config.model_dir), self.world_size)  # before any spawn
        init_method = f"tcp://127.0.0.1:{free_loopback_port()}"
        context = multiprocessing.get_context("spawn")
        for rank in range(1, self.world_size):
            process = context.Process(
                target=follower_main,
                args=(self.config, rank, self.world_size, init_method, self.timeout_seconds),
                name=f"tp-rank-{rank}",
            )
            process.start()
            self.followers.append(process)
        config = rank_config(self.config, 0)
        tp = init_tp_group(0, self.world_size, init_method, config.torch_device, self.timeout_seconds)
        return config, tp, CommandChannel(tp.cpu_group, 0)

    @property
    def follower_pids(self) -> list[int]:
        return [p.pid for p in self.followers if p.pid is not None]

    def dead_ranks(self) -> list[int]:
        """Followers that have exited (for any reason), by rank."""
        return [rank for rank, p in enumerate(self.followers, start=1) if p.exitcode is not None]

    def stop(self, timeout: float = 10.0) -> None:
        """Wait for followers to leave (after Shutdown), then kill any that did not."""
        for process in self.followers:
            process.join(timeout)
            if process.is_alive():
                logger.warning("TP %s did not exit; killing it", process.name)
                process.kill()
                process.join(5)
