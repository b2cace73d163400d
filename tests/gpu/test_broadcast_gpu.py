"""A weight broadcast between two processes on two GPUs (NCCL), as a trainer publishes into a worker:
the sender on a thread of its own on cuda:0, the receiver in another process on cuda:1 receiving on a
thread whose current device was never set (a worker's staging thread). Every tensor must arrive
intact, in packed buckets and alone, with NCCL's channels capped (our default) and uncapped.

The sender returns as soon as its work is queued and its group is released: that must not cut
short the broadcasts still in flight on the GPU (it did: receivers got garbage after ~3 buckets)."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import torch

from epochserve.client.publisher import BroadcastPublisher, PolicyPublisher
from epochserve.net import free_port
from epochserve.worker.weights import broadcast
from epochserve.worker.weights.broadcast import BroadcastSpec
from epochserve.worker.weights.manifest import manifest_of_tensors

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices"),
]


def _trainer_tensors(device: str) -> dict[str, torch.Tensor]:
    """~1.6 GB of bf16 tensors: two bigger than a bucket, many that pack several to a bucket."""
    gen = torch.Generator(device=device).manual_seed(7)
    shapes = {"embed.weight": (32000, 4096), "head.weight": (32000, 4096)}
    for layer in range(12):
        shapes |= {f"layers.{layer}.attn.weight": (4096, 4096), f"layers.{layer}.mlp.weight": (4096, 3000),
                   f"layers.{layer}.norm.weight": (4096,)}  # fmt: skip
    return {
        name: torch.randn(shape, generator=gen, device=device, dtype=torch.float32).to(torch.bfloat16)
        for name, shape in shapes.items()
    }


@pytest.mark.parametrize("channels", [broadcast.BROADCAST_CHANNELS, 0])
def test_a_broadcast_into_another_process_arrives_intact(monkeypatch, channels):
    from fixtures.broadcast_receiver import receive_and_check

    monkeypatch.setenv("EPOCHSERVE_BROADCAST_CHANNELS", str(channels))
    monkeypatch.setattr(broadcast, "BROADCAST_CHANNELS", channels)
    tensors = _trainer_tensors("cuda:0")
    manifest = manifest_of_tensors(1, tensors.items())
    spec = BroadcastSpec("127.0.0.1", free_port(), "nccl", 2, {"w": 1}, "", 128 << 20)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    receiver = context.Process(target=receive_and_check, args=(spec.to_source(), 1, 1, results))
    receiver.start()
    errors: list[BaseException] = []

    def send() -> None:  # PolicyPublisher's own sending code, from a thread of its own as it does
        try:
            owner = PolicyPublisher("unused:0", "", timeout=120)
            BroadcastPublisher(owner, "127.0.0.1", "nccl", spec.bucket_bytes).send(spec, manifest, tensors, 1)
        except BaseException as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        outcome = results.get(timeout=120)
    finally:
        sender.join(60)
        receiver.join(10)
        receiver.kill()
    assert not errors, errors
    assert outcome["error"] == ""
    assert outcome["names"] == len(tensors)
    assert outcome["bad_received"] == [] and outcome["bad_twins"] == [], outcome
