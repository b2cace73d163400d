"""Tensor-parallel process groups: how N ranks of one worker find each other.

Ranks rendezvous over TCP on loopback (rank 0 picks the port). Tensors go over NCCL on GPU and
gloo on CPU; rank 0's commands (worker/tp/commands.py) always go over a gloo group. Every collective
has a timeout: a rank that dies or stalls makes the others fail with an error instead of waiting
forever.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from datetime import timedelta

import torch
import torch.distributed as dist

from epochserve.worker.config import EngineConfig
from epochserve.worker.layers.one_shot_all_reduce import OneShotAllReduce
from epochserve.worker.layers.parallel import TensorParallel

logger = logging.getLogger(__name__)


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_config(config: EngineConfig, rank: int) -> EngineConfig:
    """Rank r of a CUDA worker uses device cuda:r (one process per GPU)."""
    if config.torch_device.type == "cuda":
        return replace(config, device=f"cuda:{rank}")
    return config


def init_tp_group(
    rank: int, world_size: int, init_method: str, device: torch.device, timeout_seconds: float
) -> TensorParallel:
    """Join the worker's process group; returns this rank's TensorParallel context."""
    timeout = timedelta(seconds=timeout_seconds)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl", init_method=init_method, rank=rank, world_size=world_size, timeout=timeout
        )
        cpu_group = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group(
            "gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=timeout
        )
        cpu_group = dist.group.WORLD
    update_group = dist.new_group(backend="gloo", timeout=timeout)
    small_all_reduce = None
    if device.type == "cuda" and os.environ.get("EPOCHSERVE_ONE_SHOT_ALL_REDUCE", "1") == "1":
        small_all_reduce = OneShotAllReduce(dist.group.WORLD, device)
    logger.info("TP rank %d/%d joined (%s)", rank, world_size, dist.get_backend())
    return TensorParallel(
        rank=rank, size=world_size, group=dist.group.WORLD, cpu_group=cpu_group, update_group=update_group,
        small_all_reduce=small_all_reduce,
    )  # fmt: skip
