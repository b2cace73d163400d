"""PolicyPublisher: how a trainer publishes policy version v to the fleet (docs/design.md §5).

    publisher = PolicyPublisher("coordinator:7070", token)
    path = publisher.save_checkpoint(v, model.state_dict(), "/shared/ckpt/v7", config_from="/shared/base")
    publisher.publish_checkpoint(v, path)          # returns once v is COMMITTED; raises if ABORTED

The manifest (per-tensor checksums) is computed where the tensors are (on the trainer's GPU when
they are there) and written beside the checkpoint; every worker rank verifies what it reads against
it, and the rollout names the manifest's checksum so a worker holding other bytes cannot commit.
Tensor names are Hugging Face's, so a trainer's `state_dict()` publishes as is.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from epochserve.controlplane.admin.client import AdminClient
from epochserve.errors import EpochserveError
from epochserve.net import free_port
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.worker.weights import broadcast
from epochserve.worker.weights.broadcast import BroadcastSpec, join_group
from epochserve.worker.weights.manifest import (
    MANIFEST_NAME,
    Manifest,
    manifest_of_checkpoint,
    manifest_of_tensors,
)

logger = logging.getLogger(__name__)

CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_DRAINS = {
    "finish": pb.DRAIN_POLICY_FINISH,
    "abort": pb.DRAIN_POLICY_ABORT,
    "overlap": pb.DRAIN_POLICY_OVERLAP,
}
_PHASES_DONE = {"committed": pb.ROLLOUT_PHASE_COMMITTED, "done": pb.ROLLOUT_PHASE_DONE}


def without_tied_head(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A tied model's state_dict() lists the embedding twice (also as lm_head.weight); a checkpoint
    of it holds it once, as Hugging Face saves it. A separate lm_head stays."""
    out = dict(tensors)
    head, embed = out.get("lm_head.weight"), out.get("model.embed_tokens.weight")
    if (
        head is not None
        and embed is not None
        and (head.data_ptr() == embed.data_ptr() or torch.equal(head, embed))
    ):
        del out["lm_head.weight"]
    return out


class RolloutAbortedError(EpochserveError):
    """The rollout was aborted: nothing changed in the fleet. `reason` says why."""

    def __init__(self, version: int, reason: str) -> None:
        super().__init__(f"rollout of policy version {version} aborted: {reason}")
        self.version = version
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PublishResult:
    version: int
    phase: str  # "committed" or "done"
    manifest_checksum: str
    reached_at: float = 0.0  # time.monotonic() when the publisher saw `phase` (before any wait for saving)


class PolicyPublisher:
    def __init__(
        self,
        admin_address: str,
        token: str,
        *,
        tls: bool = False,
        ca_file: Path | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.admin_address = admin_address
        self.token = token
        self.tls = tls
        self.ca_file = ca_file
        self.timeout = timeout  # seconds a publish may take end to end

    # ---- checkpoints ----------------------------------------------------------------------------
    @staticmethod
    def save_checkpoint(
        version: int,
        tensors: Mapping[str, torch.Tensor],
        directory: Path | str,
        config_from: Path | str | None = None,
    ) -> Path:
        """Write `tensors` as a safetensors checkpoint with its manifest (and the model's config files
        copied from `config_from`). The manifest is computed on the tensors' own device."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = without_tied_head(tensors)
        manifest = manifest_of_tensors(version, tensors.items())
        cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
        save_file(cpu, str(directory / "model.safetensors"), metadata={"format": "pt"})
        if config_from is not None:
            for name in CONFIG_FILES:
                if (Path(config_from) / name).is_file():
                    shutil.copyfile(Path(config_from) / name, directory / name)
        manifest.write(directory)
        return directory

    def publish_checkpoint(
        self,
        version: int,
        path: Path | str,
        drain: str = "overlap",
        wait_for: str = "committed",
        drain_deadline: float | None = None,
    ) -> PublishResult:
        """Roll out the checkpoint at `path` (readable by every worker) as `version`.

        Writes the manifest first if the checkpoint has none. Returns once the rollout reached
        `wait_for` ("committed": routers admit only v from now; "done": every worker serves v).
        `drain` is overlap (the default: v-1 requests finish on their weights while new ones start
        on v's at once), finish or abort; `drain_deadline` (seconds) bounds how long v-1 requests
        may still run after the commit. Raises RolloutAbortedError when it aborts,
        grpc.RpcError when the coordinator refuses it.
        """
        path = Path(path).resolve()
        manifest = Manifest.read(path) if (path / MANIFEST_NAME).is_file() else None
        if manifest is None:
            manifest = manifest_of_checkpoint(version, path)
            manifest.write(path)
        if manifest.version != version:
            raise ValueError(f"{path} holds the manifest of version {manifest.version}, not {version}")
        request = pb.StartRolloutRequest(
            version=version,
            source=str(path),
            drain=_DRAINS[drain],
            manifest_checksum=manifest.checksum,
            drain_deadline_seconds=drain_deadline,
        )
        return asyncio.run(self._start_and_wait(request, wait_for, manifest.checksum))

    def publish_tensors(
        self,
        version: int,
        tensors: Mapping[str, torch.Tensor],
        checkpoint_dir: Path | str,
        config_from: Path | str | None = None,
        drain: str = "overlap",
        wait_for: str = "committed",
        host: str = "127.0.0.1",
        bucket_bytes: int = broadcast.DEFAULT_BUCKET_BYTES,
    ) -> PublishResult:
        """Roll out `tensors` (Hugging Face names, e.g. a trainer's state_dict()) as `version` by
        broadcasting them into every READY worker's ranks (NCCL from GPU tensors, gloo from CPU).

        They are also saved to `checkpoint_dir` (a path every worker can read) after the broadcast:
        the record a restarting worker loads. `host` must be reachable from every worker.
        Returns once the rollout reached `wait_for`; raises RolloutAbortedError when it aborts.
        """
        device = next(iter(tensors.values())).device
        sender = BroadcastPublisher(self, host, "nccl" if device.type == "cuda" else "gloo", bucket_bytes)
        checkpoint = Path(checkpoint_dir).resolve()
        spec = asyncio.run(sender.plan(checkpoint))
        tensors = without_tied_head(tensors)
        manifest = manifest_of_tensors(version, tensors.items())
        errors: list[BaseException] = []

        def send_then_save() -> None:
            try:
                sender.send(spec, manifest, tensors, version)
                self.save_checkpoint(version, tensors, checkpoint, config_from)
            except BaseException as exc:  # reported through the rollout's outcome or below
                errors.append(exc)

        thread = threading.Thread(target=send_then_save, name=f"publish-v{version}", daemon=True)
        thread.start()
        request = pb.StartRolloutRequest(
            version=version,
            source=spec.to_source(),
            drain=_DRAINS[drain],
            manifest_checksum=manifest.checksum,
        )
        result = asyncio.run(self._start_and_wait(request, wait_for, manifest.checksum))
        thread.join(self.timeout)
        if errors:
            raise errors[0]
        return result

    async def _start_and_wait(
        self, request: pb.StartRolloutRequest, wait_for: str, checksum: str
    ) -> PublishResult:
        target = _PHASES_DONE[wait_for]
        async with AdminClient(self.admin_address, self.token, tls=self.tls, ca_file=self.ca_file) as admin:
            await admin.start_rollout(request, timeout=30.0)
            logger.info("rollout of policy version %d started (%s)", request.version, request.source)
            async for status in admin.watch_rollout(request.version, timeout=self.timeout):
                phase = status.rollout.phase
                if phase == pb.ROLLOUT_PHASE_ABORTED:
                    raise RolloutAbortedError(request.version, status.rollout.reason or "unknown")
                if phase == target or phase == pb.ROLLOUT_PHASE_DONE:
                    name = pb.RolloutPhase.Name(phase).split("_")[-1].lower()
                    return PublishResult(request.version, name, checksum, time.monotonic())
        raise TimeoutError(f"rollout of policy version {request.version} did not reach {wait_for} in time")


class BroadcastPublisher:
    """publish_tensors for PolicyPublisher: send tensors straight into every worker rank.

    The publisher hosts the rendezvous (a TCPStore on `host`), lists the READY workers, gives each
    worker's TP ranks consecutive global ranks after its own rank 0, starts the rollout with a
    broadcast source (worker/weights/broadcast.py), sends the manifest and the tensors, then writes
    the same tensors as a checkpoint so that workers that join later (or restart) load it from disk.
    """

    def __init__(self, publisher: PolicyPublisher, host: str, backend: str, bucket_bytes: int) -> None:
        self.publisher = publisher
        self.host = host
        self.backend = backend
        self.bucket_bytes = bucket_bytes

    async def plan(self, checkpoint: Path) -> BroadcastSpec:
        p = self.publisher
        async with AdminClient(p.admin_address, p.token, tls=p.tls, ca_file=p.ca_file) as admin:
            workers = (await admin.list_workers(timeout=30.0)).workers
        ready = sorted((w for w in workers if w.status == pb.WORKER_STATUS_READY), key=lambda w: w.worker_id)
        rank_base, next_rank = {}, 1
        for worker in ready:
            rank_base[worker.worker_id] = next_rank
            next_rank += worker.tp_size
        return BroadcastSpec(
            self.host, free_port(), self.backend, next_rank, rank_base, str(checkpoint), self.bucket_bytes
        )

    def send(
        self, spec: BroadcastSpec, manifest: Manifest, tensors: Mapping[str, torch.Tensor], version: int
    ) -> None:
        device = next(iter(tensors.values())).device
        handles = list(join_group(spec, 0, version, self.publisher.timeout, is_master=True))
        broadcast.send(handles[0], manifest, tensors, device, spec.bucket_bytes)
        broadcast.release_in_background(handles)
        logger.info("broadcast of policy version %d sent to %d ranks", version, spec.world_size - 1)
