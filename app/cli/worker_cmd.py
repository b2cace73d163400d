"""`epochctl worker`: serve a model as a worker (rank 0 serves the Worker gRPC service)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from epochserve.app.cli.etcd_flags import add_etcd_flags, etcd_config
from epochserve.errors import ConfigError

# The fields of EngineConfig exposed as flags (name, type, help); defaults come from EngineConfig.
ENGINE_FLAGS: list[tuple[str, Any, str]] = [
    ("device", str, "cpu, cuda or cuda:N"),
    ("dtype", str, "auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16"),
    ("lm_head_dtype", str, "float32 (default: fp32 math and logits, never bf16) or model"),
    ("block_size", int, "tokens per KV block"),
    ("max_num_seqs", int, "sequences running at once"),
    ("max_num_batched_tokens", int, "tokens per engine step"),
    ("max_model_len", int, "context limit in tokens"),
    ("kv_cache_bytes", int, "CPU: KV pool budget in bytes"),
    ("kv_cache_memory_fraction", float, "CUDA: share of free memory for the KV pool after loading weights"),
    ("num_kv_blocks", int, "exact KV pool size in blocks (overrides the budgets)"),
    ("policy_version", int, "policy version of the weights loaded at start"),
    ("max_n", int, "most samples per request"),
    ("load_format", str, "safetensors (default), or random: weights of the right shapes (benchmarks)"),
    ("async_scheduling", str, "auto (on for CUDA), on or off: prepare step N+1 while step N runs"),
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="serve a model as a worker")
    parser.add_argument("--model", required=True, help="Hugging Face model directory, or 'smollm2' (bundled)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (0: pick a free one)")
    parser.add_argument(
        "--session-port",
        type=int,
        default=0,
        help="port of the session link routers prefer to gRPC Session (0: a free one; -1: none)",
    )
    parser.add_argument(
        "--tls-cert", type=Path, metavar="FILE", help="serve gRPC and the session link over TLS"
    )
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="private key of --tls-cert")
    parser.add_argument("--worker-id", default=None, help="default: HOSTNAME:PORT")
    parser.add_argument(
        "--ready-file", type=Path, default=None, help="write {host, port, worker_id} here once serving"
    )
    parser.add_argument(
        "--drain-seconds", type=float, default=30.0, help="grace for in-flight requests at shutdown"
    )
    parser.add_argument("--no-prefix-cache", action="store_true", help="disable the prefix cache")
    parser.add_argument(
        "--batch-invariant",
        action="store_true",
        help="a request's tokens and logprobs are the same bits whatever shares its batch (costs throughput)",
    )
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (one process, one GPU each)")
    parser.add_argument(
        "--advertise-address", default="", help="HOST:PORT routers dial (default: --host:port)"
    )
    parser.add_argument(
        "--lease-ttl", type=int, default=10, help="seconds before a silent worker is deregistered"
    )
    add_etcd_flags(parser, required=False)
    parser.add_argument(
        "--collective-timeout",
        type=float,
        default=120.0,
        help="seconds before a stuck TP collective fails the worker",
    )
    for name, kind, help_text in ENGINE_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None, help=help_text)
    parser.set_defaults(func=run)


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

    overrides = {name: getattr(args, name) for name, _, _ in ENGINE_FLAGS if getattr(args, name) is not None}
    engine = EngineConfig(
        model_dir=resolve_model(args.model),
        enable_prefix_cache=not args.no_prefix_cache,
        batch_invariant=args.batch_invariant,
        **overrides,
    )
    config = WorkerServerConfig(
        engine=engine,
        host=args.host,
        port=args.port,
        ready_file=args.ready_file,
        drain_seconds=args.drain_seconds,
        worker_id=args.worker_id or "",
        tp=args.tp,
        collective_timeout_seconds=args.collective_timeout,
        control=control_settings(args),
        session_port=args.session_port,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
    )
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

    return ControlPlaneSettings(
        etcd=etcd_config(args),
        cluster=args.cluster,
        advertise_address=args.advertise_address,
        lease_ttl=args.lease_ttl,
    )
