"""What a router pod's HTTP front reads besides etcd (docs/http.md, docs/kubernetes.md):

- the tokenizer and chat template, from the workers' model source or spec.router.tokenizer, so that
  the front takes text; a source without tokenizer files leaves it on token ids (the router says so
  in its log and keeps serving);
- the coordinator Service's Admin address and the Admin token as a file, so that
  POST /update_weights_from_disk starts rollouts (the route asks callers for that same token).

A router without the HTTP front gets none of it: gRPC clients send token ids, and the token stays
off pods that have no use for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from epochserve.operators.builders.common import Manifest, admin_token_volume
from epochserve.operators.builders.model import (
    directory_in,
    fetcher_init_containers,
    model_dir,
    model_volume,
    pvc_volume,
)
from epochserve.operators.names import ADMIN_TOKEN_FILE, TOKENIZER_MOUNT, admin_address
from epochserve.operators.spec import ClusterSpec

TOKENIZER_VOLUME = "tokenizer"


@dataclass(slots=True)
class PodParts:
    """Flags and pod pieces to add to the router's container and pod."""

    args: list[str] = field(default_factory=list)
    volumes: list[Manifest] = field(default_factory=list)
    mounts: list[Manifest] = field(default_factory=list)
    init_containers: list[Manifest] = field(default_factory=list)


def _read_only_mount() -> Manifest:
    return {"name": TOKENIZER_VOLUME, "mountPath": TOKENIZER_MOUNT, "readOnly": True}


def tokenizer_parts(spec: ClusterSpec) -> PodParts:
    """`--tokenizer DIR` and the volume DIR is on; nothing for mode Disabled."""
    source = spec.router.tokenizer
    if source.mode == "Disabled":
        return PodParts()
    if source.mode == "Pvc":
        assert source.claim_name is not None  # spec.parse_cluster checks it
        volume = pvc_volume(TOKENIZER_VOLUME, source.claim_name)
        return PodParts(
            args=["--tokenizer", directory_in(TOKENIZER_MOUNT, source.path)],
            volumes=[volume],
            mounts=[_read_only_mount()],
        )
    # Model: the claim of a PVC model, or a URI model's own fetcher, told tokenizer files are enough.
    fetcher = fetcher_init_containers(spec, TOKENIZER_VOLUME, TOKENIZER_MOUNT, tokenizer_only=True)
    return PodParts(
        args=["--tokenizer", model_dir(spec, TOKENIZER_MOUNT)],
        volumes=[model_volume(spec, TOKENIZER_VOLUME)],
        mounts=[_read_only_mount()],
        init_containers=fetcher,
    )


def admin_parts(spec: ClusterSpec) -> PodParts:
    """`--admin-address` (the coordinator Service) and `--admin-token-file` with its Secret."""
    volume, mount = admin_token_volume(spec)
    return PodParts(
        args=[
            "--admin-address",
            admin_address(spec.namespace, spec.name),
            "--admin-token-file",
            ADMIN_TOKEN_FILE,
        ],
        volumes=[volume],
        mounts=[mount],
    )


def http_front_parts(spec: ClusterSpec) -> PodParts:
    """Everything the HTTP front needs beyond `--http-port`; empty when the front is off."""
    if spec.router.http_port is None:
        return PodParts()
    model_name = spec.router.model_name or spec.name
    parts = PodParts(args=["--http-port", str(spec.router.http_port), "--model-name", model_name])
    if spec.router.http_processes > 1:
        parts.args += ["--http-processes", str(spec.router.http_processes)]
    for more in (tokenizer_parts(spec), admin_parts(spec)):
        parts.args += more.args
        parts.volumes += more.volumes
        parts.mounts += more.mounts
        parts.init_containers += more.init_containers
    return parts
