"""CPU soak (issue 10): a local cluster under load for >= 10 minutes with >= 20 rollouts and one
worker killed and restarted, checked by the load tester's purity, freshness and accounting checks.

Brings up etcd, a coordinator, --workers tiny-Llama workers (or SmolLM2) and a router on this
machine (LocalCluster), then runs `epochctl loadtest`'s engine in this process: closed-loop load
with n-sample groups, soak mode rolling out a new version every --rollout-every seconds through
the Admin API (sources A and B in turn, drains finish and abort in turn). At --kill-at of the run,
worker-1 gets SIGKILL; --down seconds later it is started again and waits until it serves (it
loads the committed version first). Both moments are marked on the throughput plot.

Usage: python bench/soak_cpu.py [--minutes 10] [--rollout-every 20] [--out DIR] [--model tiny|smollm2]
Prints the Markdown report (the report directory also has JSON, plots and requests.jsonl); exit
code 1 when a violation was found. Timings are not pass/fail; they go to docs/benchmarks.md.
"""

from __future__ import annotations

import os

# Before grpc is imported: this process forks (restart_worker's Popen runs a preexec_fn) while its
# load generator has gRPC calls open, and with gRPC's fork support on such a child can crash
# between fork and exec (SIGSEGV, an empty log). Nothing here uses gRPC in a forked child.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from epochserve.controlplane.local_cluster import LocalCluster, LocalClusterSpec
from epochserve.loadtest.config import LoadPlan, LoadtestConfig, SoakConfig
from epochserve.loadtest.records import VersionLog
from epochserve.loadtest.render import render_markdown, verdict
from epochserve.loadtest.report import check_and_write
from epochserve.loadtest.runner import run_load
from epochserve.loadtest.workload import LengthDistribution, SyntheticWorkload

WORKER_ARGS = ("--lease-ttl", "2", "--block-size", "16", "--max-num-seqs", "16")


def tiny_llama(out_dir: Path, seed: int) -> Path:
    """A seeded random 2-layer Llama (fp32 safetensors); different seeds, different weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2, bos_token_id=1,
        initializer_range=0.2,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out_dir)
    return out_dir


def models(kind: str, root: Path) -> tuple[Path, tuple[Path, ...]]:
    """(the weights workers start with, the rollout sources in turn)."""
    if kind == "smollm2":
        from epochserve.worker.models.bundled import prepare_smollm2

        base = prepare_smollm2(progress=True)
        return base, (base,)
    a, b = tiny_llama(root / "A", seed=0), tiny_llama(root / "B", seed=1)
    return a, (b, a)


def kill_and_restart(cluster: LocalCluster, versions: VersionLog, at: float, down: float) -> threading.Thread:
    """From another thread: SIGKILL worker-1 `at` seconds from now, restart it `down` s later."""

    def chaos() -> None:
        time.sleep(at)
        cluster.workers[1].signal(signal.SIGKILL)
        versions.mark(time.monotonic(), "worker-1 SIGKILL")
        print(f"soak: worker-1 killed at +{at:.0f} s", file=sys.stderr, flush=True)
        time.sleep(down)
        started = time.monotonic()
        cluster.restart_worker(1)
        versions.mark(time.monotonic(), "worker-1 serving again")
        print(f"soak: worker-1 back after {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=chaos, name="chaos", daemon=True)
    thread.start()
    return thread


def machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    load = os.getloadavg()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"commit {commit.strip()}, load average at start {load[0]:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rollout-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of the run")
    parser.add_argument("--down", type=float, default=5.0, help="seconds worker-1 stays dead")
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--out", type=Path, default=None, help="report dir (default: a temp dir)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="epochserve-soak-"))
    out = args.out or root / "report"
    start, sources = models(args.model, root)
    duration = args.minutes * 60.0
    spec = LocalClusterSpec(
        model_dir=start, workdir=root / "cluster", num_workers=args.workers, worker_args=WORKER_ARGS,
        num_routers=1, router_args=("--lease-ttl", "2"),
    )  # fmt: skip
    about = machine()
    with LocalCluster(spec) as cluster:
        plan = LoadPlan(
            concurrency=args.concurrency, duration_seconds=duration, request_timeout_seconds=120.0,
            drain_timeout_seconds=150.0,
        )  # fmt: skip
        soak = SoakConfig(
            cluster.admin_address, cluster.token, sources, args.rollout_every, root / "versions"
        )
        config = LoadtestConfig(cluster.router_address, plan, out, soak, labels={"machine": about})
        workload = SyntheticWorkload(
            LengthDistribution.parse("uniform:8,64"), LengthDistribution.parse("uniform:16,48"),
            vocab_size=512, n=args.n, seed=0,
        )  # fmt: skip
        versions = VersionLog()
        kill_and_restart(cluster, versions, args.kill_at * duration, args.down)
        result = asyncio.run(run_load(config, workload, versions))
    report, _ = check_and_write(result)
    print(f"machine: {about}\ncluster: {args.workers} workers ({args.model}), 1 router; logs in {root}\n")
    print(render_markdown(report))
    print(f"report files in {out}", file=sys.stderr)
    return 0 if verdict(report).startswith("PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
