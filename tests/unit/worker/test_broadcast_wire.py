"""The broadcast wire format (worker/weights/broadcast.py): the source URL round-trips, bucket plans
are deterministic, and a publisher thread and a receiver thread over gloo move every tensor intact
whatever the bucket size (packed buckets, and tensors larger than a bucket)."""

from __future__ import annotations

import threading

import pytest
import torch

from epochserve.net import free_port
from epochserve.worker.weights import broadcast
from epochserve.worker.weights.broadcast import BroadcastSpec, join_group
from epochserve.worker.weights.manifest import manifest_of_tensors


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(64, 32, generator=gen),  # 8 KiB
        "b.bias": torch.randn(10, generator=gen).to(torch.bfloat16),
        "c.weight": torch.randn(300, 40, generator=gen),  # 47 KiB: larger than small buckets
        "d.scale": torch.tensor(3.0),
    }


def test_the_source_url_round_trips_with_its_bucket_size() -> None:
    spec = BroadcastSpec("10.0.0.5", 29500, "nccl", 5, {"worker-a": 1, "worker-b": 3}, "/ckpt/v7", 4096)
    assert BroadcastSpec.parse(spec.to_source()) == spec


def test_buckets_keep_name_order_and_never_split_a_tensor() -> None:
    manifest = manifest_of_tensors(1, _tensors().items())
    plan = broadcast._buckets(manifest, 16 * 1024)
    assert [name for bucket in plan for name in bucket] == sorted(manifest.tensors)
    assert ["c.weight"] in plan  # alone: bigger than the bucket


@pytest.mark.parametrize("bucket_bytes", [1 << 30, 16 * 1024, 1])
def test_every_tensor_arrives_intact_over_gloo(bucket_bytes: int) -> None:
    tensors = _tensors()
    manifest = manifest_of_tensors(3, tensors.items())
    spec = BroadcastSpec("127.0.0.1", free_port(), "gloo", 2, {"w": 1}, "", bucket_bytes)
    received: dict[str, torch.Tensor] = {}
    errors: list[BaseException] = []

    def receiver() -> None:
        try:
            group, _store = join_group(BroadcastSpec.parse(spec.to_source()), 1, 3, 30)
            got_manifest, stream = broadcast.receive(group, torch.device("cpu"), spec.bucket_bytes)
            assert got_manifest == manifest
            for name, source in stream:
                received[name] = source.read().clone()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=receiver)
    thread.start()
    group, _store = join_group(spec, 0, 3, 30, is_master=True)
    broadcast.send(group, manifest, tensors, torch.device("cpu"), spec.bucket_bytes)
    thread.join(30)
    assert not errors, errors
    assert received.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor), name
