"""RankWeightUpdater: one TP rank's side of a weight update: stage in the background, then swap or drop.

Every rank of a worker runs one, driven by the same weight commands (worker/tp/commands.py: rank 0
decides through WeightsControl, followers follow), so the ranks' staging threads meet in the same
verification collective and swap in the same step.
At most one version is staged at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from epochserve.worker.layers.parallel import TensorParallel
from epochserve.worker.layers.weight_source import WeightSource
from epochserve.worker.models.llama import LlamaForCausalLM
from epochserve.worker.models.loader import iter_checkpoint
from epochserve.worker.weights.broadcast import (
    BroadcastSpec,
    is_broadcast_source,
    join_group,
    receive,
    release_in_background,
)
from epochserve.worker.weights.manifest import MANIFEST_NAME, Manifest, ManifestError
from epochserve.worker.weights.staging import StagedWeights, StagingCancelled, stage
from epochserve.worker.weights.swap import live_fingerprint, swap_in

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StageResult:
    version: int
    staged: StagedWeights | None  # None when staging failed or was cancelled
    error: str = ""


def checkpoint_tensors(source: str) -> tuple[Manifest, Iterator[tuple[str, WeightSource]]]:
    """A published checkpoint directory: its manifest and its tensors (read lazily, sliced)."""
    directory = Path(source)
    if not directory.is_dir():
        raise ManifestError(f"checkpoint {source!r} is not a directory on this host")
    return Manifest.read(directory), iter_checkpoint(directory)


def wait_for_checkpoint(path: str, cancel: threading.Event, timeout: float) -> str:
    """The checkpoint a broadcast's publisher writes after sending: wait for its manifest."""
    deadline = time.monotonic() + timeout
    while not (Path(path) / MANIFEST_NAME).is_file():
        if cancel.wait(0.2):
            raise StagingCancelled("cancelled while waiting for the checkpoint")
        if time.monotonic() > deadline:
            raise ManifestError(f"checkpoint {path!r} did not appear within {timeout:.0f} s")
    return path


class RankWeightUpdater:
    def __init__(self, model: LlamaForCausalLM, tp: TensorParallel, prefer_device: bool = True) -> None:
        self.model = model
        self.tp = tp
        self.prefer_device = prefer_device
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._result: StageResult | None = None
        self._staged: StagedWeights | None = None
        # Runnable twins no version holds any more (promoted or dropped): the next staging loads
        # into them, so they keep their addresses and the decode graphs captured on them.
        self._spare_twins: dict[str, torch.Tensor] | None = None
        self._handles: list = []  # the broadcast's group and TCPStore client, alive while receiving
        self.broadcast_timeout = 600.0  # seconds to join a broadcast or wait for its checkpoint

    @property
    def is_staging(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def begin_stage(
        self,
        version: int,
        source: str,
        expected_manifest: str | None = None,
        broadcast_rank_base: int | None = None,
    ) -> None:
        """Start staging `version` from `source` on a background thread (live weights untouched).

        `source` is a checkpoint directory or a broadcast URL (weights/broadcast.py); for the latter
        `broadcast_rank_base` is this worker's first global rank, or None when the worker is not
        part of the broadcast and loads the checkpoint written beside it instead.
        """
        if self.is_staging:
            raise RuntimeError("a staging is already running")
        self._cancel = threading.Event()
        self._result = None
        self._staged = None
        reuse, self._spare_twins = self._spare_twins, None
        self._thread = threading.Thread(
            target=self._stage,
            args=(version, source, expected_manifest, broadcast_rank_base, self._cancel, reuse),
            daemon=True,
            name=f"stage-v{version}",
        )
        self._thread.start()

    def _stage(
        self,
        version: int,
        source: str,
        expected: str | None,
        rank_base: int | None,
        cancel: threading.Event,
        reuse: dict[str, torch.Tensor] | None,
    ) -> None:
        manifest = Manifest(version, {})
        tensors: Iterator[tuple[str, WeightSource]] = iter([])
        setup_error: Exception | None = None
        try:
            manifest, tensors = self._open_source(version, source, rank_base, cancel)
            if manifest.version != version:
                raise ManifestError(f"{source} holds version {manifest.version}, not {version}")
            if expected is not None and manifest.checksum != expected:
                raise ManifestError(f"manifest checksum {manifest.checksum[:12]} differs from the rollout's")
        except Exception as exc:
            setup_error = exc  # the rank still joins the verdict collective, reporting its failure
        try:
            staged = stage(
                self.model, self.tp, manifest, tensors, self.prefer_device, cancel, setup_error, reuse
            )
            self._result = StageResult(version, staged)
        except Exception as exc:
            logger.warning("rank %d: staging v%d failed: %s", self.tp.rank, version, exc)
            self._result = StageResult(version, None, str(exc))
        finally:
            for _ in tensors:  # a broadcast must be received to its end, or the sender would hang
                pass
            handles, self._handles = self._handles, []
            if handles:  # a broadcast: the exhausted receiver no longer holds its group
                release_in_background(handles)

    def _open_source(
        self, version: int, source: str, rank_base: int | None, cancel: threading.Event
    ) -> tuple[Manifest, Iterator[tuple[str, WeightSource]]]:
        if not is_broadcast_source(source):
            return checkpoint_tensors(source)
        spec = BroadcastSpec.parse(source)
        if rank_base is None:
            return checkpoint_tensors(wait_for_checkpoint(spec.checkpoint, cancel, self.broadcast_timeout))
        device = next(self.model.parameters()).device
        self._handles = list(join_group(spec, rank_base + self.tp.rank, version, self.broadcast_timeout))
        return receive(self._handles[0], device, spec.bucket_bytes)

    def wait(self, timeout: float | None = None) -> StageResult | None:
        """The result once the staging thread is done (None while it runs)."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return None
        return self._result

    def take_result(self) -> StageResult | None:
        """The finished staging's result, once (None while running or when nothing is pending)."""
        if self.is_staging or self._result is None:
            return None
        result, self._result = self._result, None
        self._staged = result.staged
        return result

    def verified(self) -> StagedWeights | None:
        """The staged version once verified (whether or not its result was taken), else None."""
        if self._staged is not None:
            return self._staged
        if self._result is not None and not self.is_staging:
            return self._result.staged
        return None

    def runnable_twins(self) -> dict[str, torch.Tensor] | None:
        """The verified twins when a step can run on them (every rank's sit beside its live
        parameters: StagedWeights.runnable), else None. drain=overlap runs new-version steps here."""
        staged = self.verified()
        return staged.buffers if staged is not None and staged.runnable else None

    def drop(self) -> None:
        """Abandon the staged or staging version (the thread stops at its next tensor)."""
        self._cancel.set()
        if not self.is_staging:
            self._keep_spare(self.verified())
        self._staged = None
        self._result = None

    def swap(self, version: int) -> str:
        """Make the staged `version` live (in place) and return the live fingerprint (a collective)."""
        if self.is_staging:
            self.wait()
        if self._staged is None and self._result is not None:
            self.take_result()
        staged = self._staged
        if staged is None or staged.version != version:
            raise RuntimeError(f"swap to v{version} without verified staged weights of v{version}")
        swap_in(self.model, staged)
        self._staged = None
        self._keep_spare(staged)
        return staged.fingerprint  # equal to live_fingerprint() after the copy (tests check it)

    def _keep_spare(self, staged: StagedWeights | None) -> None:
        if staged is not None and staged.runnable:
            self._spare_twins = staged.buffers

    def fingerprint(self) -> str:
        return live_fingerprint(self.model, self.tp)
