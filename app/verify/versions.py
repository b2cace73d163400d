"""Where each policy version's weights are: the base model for the start version, and each rollout's
checkpoint (its source, or for a broadcast rollout the checkpoint written beside it)."""

from __future__ import annotations

from pathlib import Path

from epochserve.controlplane.admin.client import AdminClient
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.worker.weights.broadcast import BroadcastSpec, is_broadcast_source


def parse_version_dirs(items: list[str]) -> dict[int, Path]:
    """`V=DIR` pairs from the command line."""
    out: dict[int, Path] = {}
    for item in items:
        version, sep, directory = item.partition("=")
        if not sep or not version.isdigit():
            raise ValueError(f"--version-dir {item!r}: expected VERSION=DIR")
        out[int(version)] = Path(directory)
    return out


def checkpoint_of(source: str) -> Path:
    return Path(BroadcastSpec.parse(source).checkpoint if is_broadcast_source(source) else source)


async def rollout_dirs(admin: AdminClient, timeout: float = 30.0) -> dict[int, Path]:
    """version → checkpoint of every rollout that committed (COMMITTED or DONE)."""
    reply = await admin.list_rollouts(None, timeout)
    committed = (pb.ROLLOUT_PHASE_COMMITTED, pb.ROLLOUT_PHASE_DONE)
    return {r.version: checkpoint_of(r.source) for r in reply.rollouts if r.phase in committed}
