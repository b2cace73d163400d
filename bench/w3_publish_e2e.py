"""W3 end to end: `PolicyPublisher.publish_tensors` from this (trainer) process into a worker process
of a local cluster (etcd, a coordinator, one worker), timed from the call to COMMITTED as the
publisher sees it through the Admin API: manifest, rendezvous, broadcast, the worker's verify and
staged report, the coordinator's commit. The checkpoint copy the publisher writes afterwards (for
workers that restart) is timed apart.

    --device cuda: the Llama-3.1-8B shape in bf16, trainer on cuda:0, worker on cuda:1, NCCL
                   (the issue's target: <= 0.5 s to COMMITTED on 2 H200s of one host);
    --device cpu:  a tiny Llama in fp32 over gloo (checks this script on any machine).

The worker starts from random weights of the shape (`--load-format random`); every version is new
random weights. The first version pays one-time costs (CUDA and Triton compiles); the others are
the steady state.
Usage: python bench/w3_publish_e2e.py [--device cpu|cuda] [--versions 3] [--bucket-bytes N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import LLAMA31_8B

TINY = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "bos_token_id": 1,
    "eos_token_id": 2, "torch_dtype": "float32",
}  # fmt: skip


def trainer_weights(config: dict, device: str, seed: int) -> dict[str, torch.Tensor]:
    """A new version: a randomly initialised model's state_dict (Hugging Face names)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=dtype)
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--bucket-bytes", type=int, default=None, help="broadcast buckets (default 1 GiB)")
    parser.add_argument("--json", type=Path, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
    from epochserve.client.publisher import PolicyPublisher

    args = build_parser().parse_args(argv)
    gpu = args.device == "cuda"
    config = LLAMA31_8B if gpu else TINY
    worker_args = ["--load-format", "random", "--lease-ttl", "2", "--max-model-len", "2048"]
    if gpu:  # the staged twins need a second copy of the weights beside the KV pool
        worker_args += ["--kv-cache-memory-fraction", "0.3"]
    root = Path(tempfile.mkdtemp(prefix="epochserve-w3e2e-"))
    model_dir = root / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(config))
    spec = LocalClusterSpec(
        model_dir=model_dir, workdir=root / "cluster", num_workers=1, device="cuda:1" if gpu else "cpu",
        worker_args=tuple(worker_args),
    )  # fmt: skip
    rows = []
    with LocalCluster(spec) as cluster:
        publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=600)
        for version in range(1, args.versions + 1):
            tensors = trainer_weights(config, "cuda:0" if gpu else "cpu", seed=version)
            if gpu:
                torch.cuda.synchronize()
            start = time.monotonic()
            extra = {"bucket_bytes": args.bucket_bytes} if args.bucket_bytes else {}
            checkpoint = root / f"ckpt-v{version}"
            try:
                result = publisher.publish_tensors(
                    version, tensors, checkpoint, config_from=model_dir, wait_for="committed", **extra
                )
            except Exception:
                print(f"v{version} failed; the worker's log ends:\n{cluster.workers[0].log_tail()}")
                raise
            returned = time.monotonic()
            rows.append(
                {
                    "version": version,
                    "phase": result.phase,
                    "to_committed_seconds": result.reached_at - start,
                    "checkpoint_save_after_commit_seconds": returned - result.reached_at,
                }
            )
            row = rows[-1]
            saved = row["checkpoint_save_after_commit_seconds"]
            print(f"v{version}: {result.phase} after {row['to_committed_seconds']:.3f} s; "
                  f"checkpoint written {saved:.1f} s later", flush=True)  # fmt: skip
            del tensors
            wait_done(cluster.admin_address, cluster.token, version)
    steady = [row["to_committed_seconds"] for row in rows[1:]] or [rows[0]["to_committed_seconds"]]
    device = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}" if gpu else "cpu"
    summary = {"device": device, "date": time.strftime("%Y-%m-%d"), "model": "llama-8b" if gpu else "tiny",
               "versions": rows, "steady_to_committed_median_seconds": statistics.median(steady)}  # fmt: skip
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    first, median = rows[0]["to_committed_seconds"], summary["steady_to_committed_median_seconds"]
    print(f"\n{device} {summary['date']}: publish_tensors -> COMMITTED, first {first:.3f} s, "
          f"steady-state median {median:.3f} s")  # fmt: skip
    return 0


def wait_done(admin_address: str, token: str, version: int, timeout: float = 120.0) -> None:
    """Block until the rollout of `version` is DONE (the next one is refused while it is not)."""
    import asyncio

    from epochserve.controlplane.admin.client import AdminClient
    from epochserve.proto.v1 import admin_pb2 as pb

    async def poll() -> None:
        async with AdminClient(admin_address, token) as admin:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status = await admin.get_rollout(version, timeout=10.0)
                if status.rollout.phase == pb.ROLLOUT_PHASE_DONE:
                    return
                if status.rollout.phase == pb.ROLLOUT_PHASE_ABORTED:
                    raise RuntimeError(f"v{version} aborted: {status.rollout.reason}")
                await asyncio.sleep(0.05)
            raise TimeoutError(f"v{version} not DONE after {timeout} s")

    asyncio.run(poll())


if __name__ == "__main__":
    sys.exit(main())
