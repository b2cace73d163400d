"""`epochctl worker`: serve a model as a worker (rank 0 serves the Worker gRPC service)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from epochserve.app.cli.config_flags import Flag, add_command, build
from epochserve.app.cli.etcd_flags import etcd_config, etcd_flags
from epochserve.app.cli.tls_flags import server_tls_flags
from epochserve.errors import ConfigError

# The fields of EngineConfig exposed as flags; their defaults are EngineConfig's (None: not given).
ENGINE_FLAGS: tuple[Flag, ...] = (
    Flag("device", "cpu, cuda or cuda:N", str),
    Flag("dtype", "auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16", str),
    Flag("lm-head-dtype", "float32 (default: fp32 math and logits, never bf16) or model", str),
    Flag("block-size", "tokens per KV block", int),
    Flag("max-num-seqs", "sequences running at once", int),
    Flag("max-num-batched-tokens", "tokens per engine step", int),
    Flag("max-model-len", "context limit in tokens", int),
    Flag("kv-cache-bytes", "CPU: KV pool budget in bytes", int),
    Flag(
        "kv-cache-memory-fraction", "CUDA: share of free memory for the KV pool after loading weights", float
    ),
    Flag("num-kv-blocks", "exact KV pool size in blocks (overrides the budgets)", int),
    Flag("policy-version", "policy version of the weights loaded at start", int),
    Flag("max-n", "most samples per request", int),
    Flag("load-format", "safetensors (default), or random: weights of the right shapes (benchmarks)", str),
    Flag("async-scheduling", "auto (on for CUDA), on or off: prepare step N+1 while step N runs", str),
    Flag("graph-bucket-step", "CUDA graphs: captured batch sizes above 64 go up by this (default 32)", int),
)

# The flags in --help's order: fields of WorkerServerConfig, EngineConfig and (with --etcd-endpoints)
# ControlPlaneSettings, each built from the flags naming its fields; --model is resolved to model_dir.
WORKER_FLAGS: tuple[Flag, ...] = (
    Flag("model", "Hugging Face model directory, or 'smollm2' (bundled)", required=True),
    Flag("host", "interface to listen on (default 127.0.0.1)", default="127.0.0.1"),
    Flag("port", "gRPC port (0: pick a free one)", int, 50051),
    Flag(
        "session-port",
        "port of the session link routers prefer to gRPC Session (0: a free one; -1: none)",
        type=int,
        default=0,
    ),
    *server_tls_flags("serve gRPC and the session link over TLS"),
    Flag("worker-id", "default: HOSTNAME:PORT"),
    Flag("ready-file", "write {host, port, worker_id} here once serving", Path),
    Flag("drain-seconds", "grace for in-flight requests at shutdown", float, 30.0),
    Flag("no-prefix-cache", "disable the prefix cache", negate=True, field="enable_prefix_cache"),
    Flag(
        "batch-invariant",
        "a request's tokens and logprobs are the same bits whatever shares its batch (costs throughput)",
        switch=True,
    ),
    Flag("tp", "tensor-parallel ranks (one process, one GPU each)", int, 1),
    Flag("advertise-address", "HOST:PORT routers dial (default: --host:port)", default=""),
    Flag("lease-ttl", "seconds before a silent worker is deregistered", int, 10),
    *etcd_flags(required=False),
    Flag(
        "collective-timeout",
        "seconds before a stuck TP collective fails the worker",
        float,
        120.0,
        field="collective_timeout_seconds",
    ),
    *ENGINE_FLAGS,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    add_command(subparsers, "worker", "serve a model as a worker", WORKER_FLAGS, run)


def resolve_model(model: str) -> Path:
    """The model directory --model names; ConfigError, before anything starts, when it is none."""
    if model == "smollm2":
        from epochserve.worker.models.bundled import prepare_smollm2

        return prepare_smollm2(progress=True)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"--model {model}: no such directory (a Hugging Face model directory, or 'smollm2')"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(f"--model {model}: no config.json there, so not a Hugging Face model directory")
    return path


def run(args: argparse.Namespace) -> int:
    from epochserve.worker.config import EngineConfig
    from epochserve.worker.serving.server import WorkerServerConfig, serve

    engine = build(EngineConfig, args, WORKER_FLAGS, model_dir=resolve_model(args.model))
    config = build(WorkerServerConfig, args, WORKER_FLAGS, engine=engine, control=control_settings(args))
    code = asyncio.run(serve(config))
    if args.tp > 1:
        # Leave at once: torch.distributed's exit hooks can block on a group whose peers are gone.
        logging.shutdown()
        os._exit(code)
    return code


def control_settings(args: argparse.Namespace) -> Any:
    """ControlPlaneSettings when --etcd-endpoints (or its env) is given; None runs standalone."""
    if not args.etcd_endpoints:
        return None
    from epochserve.worker.rollout.registration import ControlPlaneSettings

    return build(ControlPlaneSettings, args, WORKER_FLAGS, etcd=etcd_config(args))
