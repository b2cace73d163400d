"""The model source inside a pod: its volume, the init container that fetches a URI checkpoint, and
the directory the checkpoint is read from. Workers read the weights there; routers the tokenizer.
"""

from __future__ import annotations

from epochserve.operators.builders.common import Manifest, container_security
from epochserve.operators.spec import ClusterSpec

# Set in a router pod's fetcher: the router reads only tokenizer files, so a fetcher may skip weights.
TOKENIZER_ONLY_ENV = "MODEL_TOKENIZER_ONLY"


def directory_in(mount: str, path: str | None) -> str:
    """`path` (relative, checked by the CRD schema) under a volume mounted at `mount`."""
    return f"{mount}/{path}" if path else mount


def model_dir(spec: ClusterSpec, mount: str) -> str:
    """Where the checkpoint is once the model volume is mounted at `mount`."""
    return directory_in(mount, spec.model.path if spec.model.claim_name else None)


def pvc_volume(name: str, claim_name: str) -> Manifest:
    return {"name": name, "persistentVolumeClaim": {"claimName": claim_name, "readOnly": True}}


def model_volume(spec: ClusterSpec, name: str) -> Manifest:
    """The claim (read-only) of a PVC model, or the emptyDir a URI checkpoint is fetched into."""
    if spec.model.claim_name:
        return pvc_volume(name, spec.model.claim_name)
    return {"name": name, "emptyDir": {"sizeLimit": spec.model.size_limit}}


def fetcher_init_containers(
    spec: ClusterSpec, volume: str, mount: str, tokenizer_only: bool = False
) -> list[Manifest]:
    """The init container that copies a URI checkpoint into `volume` (none for a PVC model)."""
    if spec.model.uri is None:
        return []
    env = [{"name": "MODEL_URI", "value": spec.model.uri}, {"name": "MODEL_DIR", "value": mount}]
    if tokenizer_only:
        env.append({"name": TOKENIZER_ONLY_ENV, "value": "1"})
    return [
        {
            "name": "fetch-model",
            "image": spec.model.fetcher_image,
            "command": list(spec.model.fetcher_command),
            "env": env,
            "volumeMounts": [{"name": volume, "mountPath": mount}],
            "securityContext": container_security(),
        }
    ]
