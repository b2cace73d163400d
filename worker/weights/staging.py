"""Stage a new policy version on one rank without touching the live weights, and verify it.

Each rank loads its slices of every tensor into twins of its live parameters (on the GPU when the
memory is there, else in pinned host memory) and checksums a disjoint partition of every tensor
(rows [r·n/N, (r+1)·n/N) on rank r). The ranks sum their partial checksums (one all-reduce, which
also carries a per-rank failure flag, so every rank reaches it even after a local error) and compare
the sums with the manifest. Every rank therefore reaches the same verdict, and any missing, extra,
reshaped, retyped or corrupted tensor fails the whole stage: the rollout aborts, nothing changed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from epochserve.worker.layers.parallel import TensorParallel
from epochserve.worker.layers.weight_source import WeightSource
from epochserve.worker.models.llama import LlamaForCausalLM, checkpoint_names
from epochserve.worker.weights.checksum import Checksum, from_int64_pair, row_range_checksum, to_int64_pair
from epochserve.worker.weights.fingerprint import fingerprint
from epochserve.worker.weights.manifest import Manifest, ManifestError

logger = logging.getLogger(__name__)


class StagingCancelled(Exception):
    """The rollout was aborted while this rank was still reading."""


@dataclass(slots=True)
class StagedWeights:
    """Twins of one rank's live parameters holding version `version`, verified against its manifest."""

    version: int
    manifest_checksum: str
    buffers: dict[str, torch.Tensor]  # parameter name → twin (same shape and dtype)
    location: str  # "gpu" or "host"
    fingerprint: str  # of the twins: what the live weights' fingerprint will be after the swap
    # Every rank's twins sit on its live parameters' device, so a step can run on them directly
    # (drain=overlap serves the new version on them while the old one retires).
    runnable: bool = False


def allocate_twins(
    model: LlamaForCausalLM, prefer_device: bool, reuse: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], str]:
    """Empty twins of every parameter: on the parameters' device when `prefer_device` and it has the
    memory, otherwise in pinned host memory (slower swap, no device memory). `reuse`: an earlier
    version's twins beside the live parameters, taken as they are (same addresses, so decode graphs
    captured on them stay valid) when they still fit the model."""
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    if prefer_device and reuse is not None and _twins_fit(reuse, params):
        return reuse, "gpu" if device.type == "cuda" else "host"
    needed = sum(p.numel() * p.element_size() for p in params.values())
    on_device = device.type == "cpu" or (prefer_device and torch.cuda.mem_get_info(device)[0] > needed * 1.05)
    if on_device:
        return {
            name: torch.empty_like(p) for name, p in params.items()
        }, "gpu" if device.type == "cuda" else "host"
    pin = device.type == "cuda"
    return {name: torch.empty(p.shape, dtype=p.dtype, pin_memory=pin) for name, p in params.items()}, "host"


def _twins_fit(twins: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> bool:
    return twins.keys() == params.keys() and all(
        t.shape == p.shape and t.dtype == p.dtype and t.device == p.device
        for t, p in zip(twins.values(), (params[name] for name in twins), strict=True)
    )


def partition_checksum(
    source: WeightSource, rank: int, size: int, device: torch.device | None = None
) -> Checksum:
    """This rank's share of the tensor's checksum: its partition of the rows (dim 0), summed on
    `device` (a GPU does the int64 arithmetic at memory speed; the CPU is the bottleneck otherwise)."""
    shape = source.shape
    if not shape:
        return row_range_checksum(source.read(), 0, 1) if rank == 0 else Checksum()
    rows = shape[0]
    per_rank = -(-rows // size)
    start = rank * per_rank
    count = max(0, min(per_rank, rows - start))
    if count == 0:
        return Checksum()
    row_numel = 1
    for d in shape[1:]:
        row_numel *= d
    rows_read = source.read(0, start, count)
    if device is not None and device.type == "cuda":
        rows_read = rows_read.to(device, non_blocking=True)
    return row_range_checksum(rows_read, start, row_numel)


def stage(
    model: LlamaForCausalLM,
    tp: TensorParallel,
    manifest: Manifest,
    tensors: Iterable[tuple[str, WeightSource]],
    prefer_device: bool = True,
    cancel: threading.Event | None = None,
    error: BaseException | None = None,
    reuse: dict[str, torch.Tensor] | None = None,
) -> StagedWeights:
    """Load `tensors` into twins of the live parameters and verify them with the other ranks.

    Raises ManifestError (on every rank alike) when the staged version does not match its manifest
    or any rank failed; StagingCancelled when `cancel` was set. Live weights are never written.
    `error`: this rank already failed (e.g. could not open the source); it still joins the verdict.
    `reuse`: twins of an earlier version to load into (allocate_twins).
    """
    partial: dict[str, Checksum] = {}
    device = next(model.parameters()).device
    buffers: dict[str, torch.Tensor] = {}
    location = "host"
    try:
        if error is not None:
            raise error
        _check_names(model, manifest)
        buffers, location = allocate_twins(model, prefer_device, reuse)
        for name, source in tensors:
            if cancel is not None and cancel.is_set():
                raise StagingCancelled(f"staging of v{manifest.version} cancelled")
            _check_entry(manifest, name, source)
            with torch.no_grad():
                model.load_weights([(name, source)], targets=buffers)
            partial[name] = partition_checksum(source, tp.rank, tp.size, device)
        missing = sorted(set(manifest.tensors) - set(partial))
        if missing:
            raise ManifestError(
                f"{len(missing)} tensors of the manifest were not received, e.g. {missing[:3]}"
            )
    except Exception as exc:  # every rank must still reach the verdict below
        error = exc
        logger.warning("rank %d: staging v%d failed: %s", tp.rank, manifest.version, exc)
    beside_live = bool(buffers) and all(b.device == device for b in buffers.values())
    runnable = _verdict(tp, manifest, partial, error, beside_live)
    # Computed here, in the background, so that the swap's pause does not include it.
    weights_fingerprint = fingerprint(buffers, tp)
    return StagedWeights(
        manifest.version, manifest.checksum, buffers, location, weights_fingerprint, runnable
    )


def _check_names(model: LlamaForCausalLM, manifest: Manifest) -> None:
    expected = checkpoint_names(model.config)
    missing, extra = sorted(expected - set(manifest.tensors)), sorted(set(manifest.tensors) - expected)
    if missing or extra:
        raise ManifestError(f"manifest does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")


def _check_entry(manifest: Manifest, name: str, source: WeightSource) -> None:
    entry = manifest.tensors.get(name)
    if entry is None:
        raise ManifestError(f"tensor {name!r} is not in the manifest")
    if tuple(source.shape) != entry.shape or source.dtype_name != entry.dtype:
        raise ManifestError(
            f"{name}: got {source.dtype_name}{list(source.shape)}, "
            f"manifest says {entry.dtype}{list(entry.shape)}"
        )


def _verdict(
    tp: TensorParallel,
    manifest: Manifest,
    partial: dict[str, Checksum],
    error: BaseException | None,
    beside_live: bool = False,
) -> bool:
    """Sum partial checksums over the ranks and compare with the manifest; raise on any failure.
    Returns whether every rank's twins sit beside its live parameters (`beside_live`)."""
    names = sorted(manifest.tensors)
    sums = torch.zeros(len(names) + 1, 2, dtype=torch.int64)
    for i, name in enumerate(names):
        sums[i] = to_int64_pair(partial.get(name, Checksum()))
    sums[-1, 0] = 1 if error is not None else 0  # ranks that failed
    sums[-1, 1] = 1 if beside_live else 0  # ranks whose twins a step can run on
    if tp.size > 1:
        dist.all_reduce(sums, group=tp.update_group)
    if isinstance(error, StagingCancelled):
        raise error
    if error is not None:
        raise ManifestError(str(error)) if not isinstance(error, ManifestError) else error
    if int(sums[-1, 0]) > 0:
        raise ManifestError(f"{int(sums[-1, 0])} other TP rank(s) failed to stage v{manifest.version}")
    bad = [
        name
        for i, name in enumerate(names)
        if from_int64_pair(sums[i]).hex() != manifest.tensors[name].checksum
    ]
    if bad:
        raise ManifestError(f"checksum mismatch in {len(bad)} tensors, e.g. {bad[:3]}")
    return int(sums[-1, 1]) == tp.size
