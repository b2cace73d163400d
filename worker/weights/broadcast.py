"""Weights over a collective broadcast: a trainer sends a new version straight into every worker rank.

The publisher (rank 0 of a process group of its own) and every TP rank of every worker (ranks
base_w + r) meet through a TCPStore the publisher hosts. The source of such a rollout is a URL:

    nccl://HOST:PORT?backend=nccl&world=5&ranks=worker-a:1,worker-b:3&checkpoint=/ckpt/v7&bucket=1073741824

On the wire: the manifest (length, then JSON bytes), then every tensor of the manifest in name
order, packed as raw bytes into buckets of at most `bucket_bytes`. Both sides derive the same bucket
plan from the manifest, so nothing else is exchanged. The checkpoint the publisher also writes is
where a worker outside the broadcast (joined late, or restarting) loads the version from.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlparse

import torch
import torch.distributed as dist

from epochserve.worker.layers.weight_source import TensorSource, WeightSource
from epochserve.worker.weights.manifest import DTYPE_NAMES, Manifest, ManifestError

SCHEME = "nccl"
DEFAULT_BUCKET_BYTES = 1 << 30
# A version's group is used for one broadcast, so its setup counts as much as its bandwidth: NCCL
# sets up every channel (CTA) when the communicator is created, and on 2 H200s 4 channels instead of
# the default 24 cut setup from 0.3-0.9 s to ~0.1 s for 30% less bandwidth (docs/benchmarks.md, W3).
BROADCAST_CHANNELS = int(os.environ.get("EPOCHSERVE_BROADCAST_CHANNELS", "4"))
_DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True, slots=True)
class BroadcastSpec:
    host: str
    port: int
    backend: str  # "nccl" (GPUs) or "gloo" (CPU)
    world_size: int
    rank_base: dict[str, int]  # worker id → global rank of its TP rank 0
    checkpoint: str  # where the version is also written, for workers outside the broadcast
    bucket_bytes: int = DEFAULT_BUCKET_BYTES  # both sides derive the same bucket plan from it

    def to_source(self) -> str:
        query = {
            "backend": self.backend,
            "world": str(self.world_size),
            "ranks": ",".join(f"{w}:{r}" for w, r in sorted(self.rank_base.items())),
            "checkpoint": self.checkpoint,
            "bucket": str(self.bucket_bytes),
        }
        return f"{SCHEME}://{self.host}:{self.port}?{urlencode(query)}"

    @classmethod
    def parse(cls, source: str) -> BroadcastSpec:
        url = urlparse(source)
        if url.scheme != SCHEME or url.hostname is None or url.port is None:
            raise ManifestError(f"not a broadcast source: {source!r}")
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        ranks = dict(item.rsplit(":", 1) for item in query.get("ranks", "").split(",") if item)
        return cls(
            host=url.hostname,
            port=url.port,
            backend=query.get("backend", "nccl"),
            world_size=int(query["world"]),
            rank_base={w: int(r) for w, r in ranks.items()},
            checkpoint=query.get("checkpoint", ""),
            bucket_bytes=int(query.get("bucket", DEFAULT_BUCKET_BYTES)),
        )


def is_broadcast_source(source: str) -> bool:
    return source.startswith(f"{SCHEME}://")


def join_group(spec: BroadcastSpec, rank: int, version: int, timeout_seconds: float, is_master: bool = False):
    """This process's membership (rank `rank`) of the version's broadcast group."""
    timeout = timedelta(seconds=timeout_seconds)
    store = dist.TCPStore(spec.host, spec.port, None, is_master, timeout, wait_for_workers=False)
    prefixed = dist.PrefixStore(f"epochserve/v{version}", store)
    if spec.backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        if BROADCAST_CHANNELS > 0:
            options.config.max_ctas = BROADCAST_CHANNELS
        return dist.ProcessGroupNCCL(prefixed, rank, spec.world_size, options), store
    return dist.ProcessGroupGloo(prefixed, rank, spec.world_size, timeout), store


def release_in_background(handles: list) -> None:
    """Drop the group and store in `handles` (their only holder) on a thread of its own: a NCCL
    group's destructor waits for its watchdog thread (~0.5 s), pure latency on a rollout's path."""
    threading.Thread(target=handles.clear, name="release-broadcast-group", daemon=True).start()


def _broadcast(group, tensor: torch.Tensor) -> None:
    options = dist.BroadcastOptions()
    options.rootRank = 0
    group.broadcast([tensor], options).wait()  # on a GPU: orders this thread's stream after it, no more


def _until_sent(device: torch.device) -> None:
    """Block the host until every broadcast this thread queued has completed. NCCL work runs
    asynchronously to the host, and releasing a group (release_in_background) with collectives still
    in flight cut them short: the worker received garbage from the third or fourth 1 GiB bucket on."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _buckets(manifest: Manifest, bucket_bytes: int) -> list[list[str]]:
    """Consecutive tensors (in name order) packed up to bucket_bytes (one tensor may exceed it)."""
    buckets: list[list[str]] = [[]]
    size = 0
    for name in sorted(manifest.tensors):
        nbytes = _nbytes(manifest, name)
        if buckets[-1] and size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(name)
        size += nbytes
    return [b for b in buckets if b]


def _nbytes(manifest: Manifest, name: str) -> int:
    entry = manifest.tensors[name]
    numel = 1
    for d in entry.shape:
        numel *= d
    return numel * torch.empty((), dtype=_DTYPES[entry.dtype]).element_size()


def send(
    group,
    manifest: Manifest,
    tensors: Mapping[str, torch.Tensor],
    device: torch.device,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> None:
    """Publisher side (rank 0): the manifest, then every tensor's bytes, bucket by bucket."""
    text = torch.tensor(list(manifest.to_json().encode()), dtype=torch.uint8, device=device)
    _broadcast(group, torch.tensor([text.numel()], dtype=torch.int64, device=device))
    _broadcast(group, text)
    for names in _buckets(manifest, bucket_bytes):
        parts = [tensors[n].detach().to(device).contiguous().view(-1).view(torch.uint8) for n in names]
        _broadcast(group, torch.cat(parts) if len(parts) > 1 else parts[0].clone())
    _until_sent(device)


def receive(
    group, device: torch.device, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> tuple[Manifest, Iterator[tuple[str, WeightSource]]]:
    """Worker side: the manifest, and the tensors as they arrive (consume them in order)."""
    length = torch.zeros(1, dtype=torch.int64, device=device)
    _broadcast(group, length)
    text = torch.empty(int(length.item()), dtype=torch.uint8, device=device)
    _broadcast(group, text)
    manifest = Manifest.from_json(bytes(text.cpu().tolist()).decode())

    def tensors() -> Iterator[tuple[str, WeightSource]]:
        for names in _buckets(manifest, bucket_bytes):
            bucket = torch.empty(sum(_nbytes(manifest, n) for n in names), dtype=torch.uint8, device=device)
            _broadcast(group, bucket)
            offset = 0
            for name in names:
                entry, nbytes = manifest.tensors[name], _nbytes(manifest, name)
                raw = bucket[offset : offset + nbytes]
                yield name, TensorSource(raw.view(_DTYPES[entry.dtype]).view(entry.shape))
                offset += nbytes
        _until_sent(device)

    return manifest, tensors()
