"""W3 over NCCL on two GPUs of one host: a trainer's 8B version (16 GB of bf16 on GPU 0) broadcast
into a worker rank on GPU 1, received into its staging twins and verified against the manifest.

This times the data path of `PolicyPublisher.publish_tensors` (manifest on the trainer's GPU, the
bucketed NCCL broadcast, the worker's slice-and-verify into device twins); the control plane adds
its etcd transactions on top (tens of ms, tests/integration/rollouts measure it on CPU).
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


def worker(model_dir: str, source: str, queue) -> None:
    torch.cuda.set_device(1)
    from fixtures.engine import make_engine

    calls = trace_broadcasts(1)

    engine = make_engine(Path(model_dir), device="cuda:1", load_format="random", max_model_len=2048,
                         kv_cache_memory_fraction=0.3, cuda_graphs=False)  # fmt: skip
    queue.put(("ready", time.time()))
    engine.runner.stage(1, source, None, broadcast_rank_base=1)
    result = engine.runner.updater.wait()
    queue.put(
        (
            "staged",
            time.time(),
            result.staged is not None,
            result.error,
            result.staged.location if result.staged else "",
            calls,
        )
    )


def main() -> None:
    from epochserve.controlplane.etcd_launcher import free_port
    from epochserve.worker.models.config import ModelConfig
    from epochserve.worker.weights import broadcast
    from epochserve.worker.weights.broadcast import BroadcastSpec, join_group
    from epochserve.worker.weights.manifest import manifest_of_tensors

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict = {"device": f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}",
                     "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config(Path(tmp) / "m")
        spec = BroadcastSpec("127.0.0.1", free_port(), "nccl", 2, {"w": 1}, str(Path(tmp) / "ckpt"))
        queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(
            target=worker, args=(str(model_dir), spec.to_source(), queue)
        )
        child.start()
        assert queue.get(timeout=300)[0] == "ready"
        torch.cuda.set_device(0)

        tensors = hf_tensors(ModelConfig.from_dir(model_dir), device="cuda:0")
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        torch.cuda.synchronize()
        start = time.time()
        manifest = manifest_of_tensors(1, tensors.items())
        torch.cuda.synchronize()
        results["manifest_seconds"] = time.time() - start
        calls = trace_broadcasts(0)
        group, _store = join_group(spec, 0, 1, 300, is_master=True)
        sent_at = time.time()
        broadcast.send(group, manifest, tensors, torch.device("cuda:0"))
        torch.cuda.synchronize()
        results["send_seconds"] = time.time() - sent_at
        _kind, staged_at, ok, error, location, worker_calls = queue.get(timeout=300)
        child.join(60)
        buckets = calls[2:]  # after the manifest's length and text
        results["first_broadcast_seconds"] = calls[0][1] - calls[0][0]  # includes communicator setup
        results["bucket_seconds"] = [round(end - begin, 4) for begin, end, _ in buckets]
        results["bucket_gaps_seconds"] = [round(b[0] - a[1], 4) for a, b in itertools.pairwise(buckets)]
        results["worker_first_broadcast_seconds"] = worker_calls[0][1] - worker_calls[0][0]
        results["worker_last_bucket_to_staged_seconds"] = staged_at - worker_calls[-1][1]
        results.update(bytes=nbytes, staged_ok=ok, error=error, location=location,
                       broadcast_to_staged_seconds=staged_at - sent_at,
                       publish_data_path_seconds=staged_at - start)  # fmt: skip
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    gb = results["bytes"] / 1e9
    rate = gb / results["send_seconds"]
    print(f"\n{results['device']} {results['date']}: {gb:.1f} GB; "
          f"manifest {results['manifest_seconds']:.2f} s; "
          f"broadcast {results['send_seconds']:.2f} s ({rate:.0f} GB/s); broadcast start to verified on "
          f"the worker {results['broadcast_to_staged_seconds']:.2f} s (ok: {ok})")  # fmt: skip


if __name__ == "__main__":
    main()
