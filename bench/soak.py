"""Soak (issue 10): a local cluster under load with rollouts every few seconds and one worker killed
and restarted, checked by the load tester's purity, freshness and accounting checks.

Brings up etcd, a coordinator, --workers workers and a router on this machine (LocalCluster), then
runs `epochctl loadtest`'s engine in this process: closed-loop load with n-sample groups, soak mode
rolling out a new version every --rollout-every seconds through the Admin API (sources A and B in
turn, drains finish and abort in turn). At --kill-at of the run (a fraction; 0 = never), the last
worker gets SIGKILL; --down seconds later it is started again and waits until it serves (it loads
the committed version first). Both moments are marked on the throughput plot.

Models: `tiny` (a 2-layer random Llama, the CPU soak), `smollm2` (bundled), `llama-1b` (a random
Llama-3.2-1B shape in bf16, for GPU runs: --device cuda).

Usage: python bench/soak.py [--minutes 10] [--rollout-every 20] [--out DIR] [--model tiny|smollm2|llama-1b]
            [--device cpu|cuda] [--workers 2] [--concurrency 8] [--n 2] [--input uniform:8,64] ...
Prints the Markdown report (the report directory also has JSON, plots and requests.jsonl); exit
code 1 when a violation was found. Timings are not pass/fail; they go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.loadtest.config import LoadPlan, LoadtestConfig, SoakConfig
from epochserve.loadtest.records import RequestRecord, VersionLog
from epochserve.loadtest.render import render_markdown, verdict
from epochserve.loadtest.report import check_and_write
from epochserve.loadtest.runner import run_load
from epochserve.loadtest.workload import LengthDistribution, SyntheticWorkload

TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2, bos_token_id=1, initializer_range=0.2,
)  # fmt: skip
LLAMA_1B = dict(
    vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
    num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=True,
    eos_token_id=128001, bos_token_id=128000,
)  # fmt: skip


def random_llama(out_dir: Path, shape: dict, seed: int, dtype: torch.dtype, device: str) -> Path:
    """A seeded random Llama of `shape` saved as safetensors; different seeds, different weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape), dtype=dtype)
    model.save_pretrained(out_dir)
    return out_dir


def models(kind: str, root: Path, device: str) -> tuple[Path, tuple[Path, ...], int]:
    """(the weights workers start with, the rollout sources in turn, the vocabulary size)."""
    if kind == "smollm2":
        from epochserve.worker.models.bundled import prepare_smollm2

        base = prepare_smollm2(progress=True)
        return base, (base,), 49152
    shape, dtype = (TINY, torch.float32) if kind == "tiny" else (LLAMA_1B, torch.bfloat16)
    a = random_llama(root / "A", shape, seed=0, dtype=dtype, device=device)
    b = random_llama(root / "B", shape, seed=1, dtype=dtype, device=device)
    return a, (b, a), shape["vocab_size"]


def worker_args(device: str, max_num_seqs: int) -> tuple[str, ...]:
    args = ("--lease-ttl", "2", "--max-num-seqs", str(max_num_seqs))
    # CPU: small blocks keep the tiny model's pool fine-grained; CUDA: one GPU per worker.
    return args + (("--block-size", "16") if device == "cpu" else ("--kv-cache-memory-fraction", "0.8"))


def kill_and_restart(
    cluster: LocalCluster, versions: VersionLog, at: float, down: float, restarted_at: list[float]
) -> threading.Thread:
    """From another thread: SIGKILL the last worker `at` seconds from now, restart it `down` s later
    (its ready file appears once it serves; `restarted_at` gets that moment, monotonic)."""
    index = len(cluster.workers) - 1
    name = f"worker-{index}"

    def chaos() -> None:
        time.sleep(at)
        cluster.workers[index].signal(signal.SIGKILL)
        versions.mark(time.monotonic(), f"{name} SIGKILL")
        print(f"soak: {name} killed at +{at:.0f} s", file=sys.stderr, flush=True)
        time.sleep(down)
        started = time.monotonic()
        cluster.restart_worker(index)
        restarted_at.append(time.monotonic())
        versions.mark(restarted_at[0], f"{name} serving again")
        print(f"soak: {name} back after {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=chaos, name="chaos", daemon=True)
    thread.start()
    return thread


def samples_after(records: list[RequestRecord], worker_id: str, origin: float, at: float) -> int:
    """Samples `worker_id` finished for requests sent after `at`: the restarted worker must take
    load again, not merely come up (a silent second death passes every purity check)."""
    return sum(
        1
        for record in records
        if origin + record.sent_at > at
        for sample in record.samples
        if sample.worker_id == worker_id
    )


def machine(device: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    load = os.getloadavg()
    cpus = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return (
        f"{cpus}{gpu}, torch {torch.__version__}, "
        f"commit {commit.strip() or '?'}, load average at start {load[0]:.2f}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rollout-every", type=float, default=20.0, help="seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--kill-at", type=float, default=0.4, help="fraction of the run (0: no kill)")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the killed worker stays dead")
    parser.add_argument("--model", choices=("tiny", "smollm2", "llama-1b"), default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: worker i on GPU i)")
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--input", default="uniform:8,64", help="prompt length distribution")
    parser.add_argument("--output", default="uniform:16,48", help="max_tokens distribution")
    parser.add_argument("--out", type=Path, default=None, help="report dir (default: a temp dir)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="epochserve-soak-"))
    out = args.out or root / "report"
    start, sources, vocab_size = models(args.model, root, args.device)
    duration = args.minutes * 60.0
    spec = LocalClusterSpec(
        model_dir=start, workdir=root / "cluster", num_workers=args.workers, device=args.device,
        worker_args=worker_args(args.device, args.max_num_seqs),
        one_gpu_per_worker=args.device.startswith("cuda"), num_routers=1, router_args=("--lease-ttl", "2"),
    )  # fmt: skip
    about = machine(args.device)
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
            LengthDistribution.parse(args.input), LengthDistribution.parse(args.output),
            vocab_size=vocab_size, n=args.n, seed=0,
        )  # fmt: skip
        versions = VersionLog()
        restarted_at: list[float] = []
        if args.kill_at > 0:
            kill_and_restart(cluster, versions, args.kill_at * duration, args.down, restarted_at)
        result = asyncio.run(run_load(config, workload, versions))
    report, _ = check_and_write(result)
    cluster_line = f"{args.workers} workers ({args.model}, {args.device}), 1 router; logs in {root}"
    print(f"machine: {about}\ncluster: {cluster_line}\n")
    print(render_markdown(report))
    print(f"report files in {out}", file=sys.stderr)
    ok = verdict(report).startswith("PASS")
    if args.kill_at > 0:
        killed = f"worker-{args.workers - 1}"
        served = (
            samples_after(result.state.records, killed, result.state.origin, restarted_at[0])
            if restarted_at
            else 0
        )
        print(f"\n{killed} after its restart: {served} samples of requests sent after it came back")
        ok = ok and served > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
