"""What the kubelet does before a container starts, done on a temporary directory: lay out each of
a pod's volumes (Secrets written as files, claims as directories the test filled), then rewrite the
container's args so its mount paths point there and `$(VAR)` reads the given environment.

It lets a test hand the operator's generated args to the real `epochctl` parser and check that
every file they name is where the pod's mounts put it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_VARIABLE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def claim_dir(root: Path, claim_name: str) -> Path:
    """Where the test puts the contents of a PersistentVolumeClaim."""
    return root / "claims" / claim_name


def _volume_dir(root: Path, volume: dict[str, Any], secrets: dict[str, dict[str, str]]) -> Path:
    if "persistentVolumeClaim" in volume:
        return claim_dir(root, volume["persistentVolumeClaim"]["claimName"])
    directory = root / "volumes" / volume["name"]
    directory.mkdir(parents=True)
    if "secret" in volume:
        data = secrets[volume["secret"]["secretName"]]
        items = volume["secret"].get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            (directory / item["path"]).write_text(data[item["key"]])
    return directory


def container_args(
    pod: dict[str, Any],
    container: dict[str, Any],
    root: Path,
    secrets: dict[str, dict[str, str]],
    env: dict[str, str],
) -> list[str]:
    """`container`'s args as they would run, with every mount path moved under `root`."""
    volumes = {v["name"]: _volume_dir(root, v, secrets) for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
    resolved = []
    for arg in container["args"]:
        arg = _VARIABLE.sub(lambda match: env[match.group(1)], arg)
        for mount_path in sorted(mounts, key=len, reverse=True):  # the deepest mount wins
            if arg == mount_path or arg.startswith(mount_path + "/"):
                arg = str(mounts[mount_path]) + arg[len(mount_path) :]
                break
        resolved.append(arg)
    return resolved
