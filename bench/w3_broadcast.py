"""W3 over NCCL on two GPUs of one host: a trainer's 8B version (16 GB of bf16 on GPU 0) broadcast
into a worker rank on GPU 1, received into its staging twins and verified against the manifest.

This times the data path of `PolicyPublisher.publish_tensors` (manifest on the trainer's GPU, the
bucketed NCCL broadcast, the worker's slice-and-verify into device twins); the control plane adds
its etcd transactions on top (tens of ms, tests/integration/rollouts measure it on CPU). Two
versions are published in a row, each over a process group of its own as in production: the first
pays the one-time costs of a process (CUDA context, Triton compiles), the second is the steady state.
    python bench/w3_broadcast.py [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_common import write_config
from w3_weight_update import hf_tensors


def trace_broadcasts(device: int) -> list[tuple[float, float, int]]:
    """Record (start, end, bytes) of every broadcast call of weights/broadcast.py in this process;
    the first one includes creating the NCCL communicator."""
    from epochserve.worker.weights import broadcast

    calls: list[tuple[float, float, int]] = []
    untraced = broadcast._broadcast

    def traced(group, tensor: torch.Tensor) -> None:
        start = time.time()
        untraced(group, tensor)
        torch.cuda.synchronize(device)
        calls.append((start, time.time(), tensor.numel() * tensor.element_size()))

    broadcast._broadcast = traced
    return calls


def time_staging_steps() -> dict[str, float]:
    """Seconds spent in the worker's staging steps after the data arrived (summed per version)."""
    from epochserve.worker.weights import staging

    spent: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            start = time.time()
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.synchronize(1)  # the worker's GPU (this runs on its staging thread)
                spent[name] = spent.get(name, 0.0) + time.time() - start

        return wrapper

    for name in ("partition_checksum", "_verdict", "fingerprint"):
        setattr(staging, name, timed(name, getattr(staging, name)))
    return spent


def worker(model_dir: str, sources: list[str], queue) -> None:
    torch.cuda.set_device(1)
    from fixtures.engine import make_engine

    calls = trace_broadcasts(1)
    spent = time_staging_steps()
    engine = make_engine(Path(model_dir), device="cuda:1", load_format="random", max_model_len=2048,
                         kv_cache_memory_fraction=0.3, cuda_graphs=False)  # fmt: skip
    queue.put(("ready", time.time()))
    for version, source in enumerate(sources, start=1):
        calls.clear()
        spent.clear()
        engine.weights.stage(version, source, None, broadcast_rank_base=1)
        result = engine.weights.wait()
        staged = result.staged
        queue.put(("staged", time.time(), staged is not None, result.error, staged.location if staged else "",
                   list(calls), dict(spent)))  # fmt: skip
        engine.weights.drop()


def publish(spec, version: int, tensors: dict[str, torch.Tensor], queue) -> dict:
    """Trainer side of one version: manifest, join the version's group, send; then the worker's report."""
    from epochserve.worker.weights import broadcast
    from epochserve.worker.weights.broadcast import join_group
    from epochserve.worker.weights.manifest import manifest_of_tensors

    calls = trace_broadcasts(0)
    torch.cuda.synchronize()
    start = time.time()
    manifest = manifest_of_tensors(version, tensors.items())
    torch.cuda.synchronize()
    manifest_seconds = time.time() - start
    group, _store = join_group(spec, 0, version, 300, is_master=True)
    sent_at = time.time()
    broadcast.send(group, manifest, tensors, torch.device("cuda:0"))
    torch.cuda.synchronize()
    send_seconds = time.time() - sent_at
    _kind, staged_at, ok, error, location, worker_calls, worker_steps = queue.get(timeout=300)
    buckets = calls[2:]  # after the manifest's length and text
    return {
        "manifest_seconds": manifest_seconds,
        "send_seconds": send_seconds,
        "first_broadcast_seconds": calls[0][1] - calls[0][0],  # includes creating the communicator
        "buckets_seconds": buckets[-1][1] - buckets[0][0],
        "bucket_seconds": [round(end - begin, 4) for begin, end, _ in buckets],
        "bucket_gaps_seconds": [round(b[0] - a[1], 4) for a, b in itertools.pairwise(buckets)],
        "worker_first_broadcast_seconds": worker_calls[0][1] - worker_calls[0][0],
        "worker_last_bucket_to_staged_seconds": staged_at - worker_calls[-1][1],
        "worker_step_seconds": worker_steps,
        "staged_ok": ok, "error": error, "location": location,
        "broadcast_to_staged_seconds": staged_at - sent_at,
        "publish_data_path_seconds": staged_at - start,
    }  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    from epochserve.net import free_port
    from epochserve.worker.models.config import ModelConfig
    from epochserve.worker.weights.broadcast import BroadcastSpec

    args = build_parser().parse_args(argv)
    results: dict = {"device": f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}",
                     "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config(Path(tmp) / "m")
        specs = [BroadcastSpec("127.0.0.1", free_port(), "nccl", 2, {"w": 1}, str(Path(tmp) / f"ckpt{v}"))
                 for v in (1, 2)]  # fmt: skip
        queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(
            target=worker, args=(str(model_dir), [spec.to_source() for spec in specs], queue)
        )
        child.start()
        assert queue.get(timeout=300)[0] == "ready"
        torch.cuda.set_device(0)
        tensors = hf_tensors(ModelConfig.from_dir(model_dir), device="cuda:0")
        results["bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
        results["first_version"] = publish(specs[0], 1, tensors, queue)
        results["steady_state"] = publish(specs[1], 2, tensors, queue)
        child.join(60)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    gb = results["bytes"] / 1e9
    for label in ("first_version", "steady_state"):
        r = results[label]
        parts = [
            f"{gb:.1f} GB",
            f"manifest {r['manifest_seconds']:.3f} s",
            f"group setup (first broadcast) {r['first_broadcast_seconds']:.3f} s",
            f"buckets {r['buckets_seconds']:.3f} s ({gb / r['buckets_seconds']:.0f} GB/s)",
            f"last bucket to verified {r['worker_last_bucket_to_staged_seconds']:.3f} s",
            f"manifest start to verified {r['publish_data_path_seconds']:.3f} s (ok: {r['staged_ok']})",
        ]
        print(f"{results['device']} {results['date']} {label}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
