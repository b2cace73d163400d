"""VersionPublisher: turn a source checkpoint into a publishable policy version v, cheaply.

A worker stages version v only from a directory whose manifest names v (worker/weights/updater.py),
and versions are used once, so a soak of twenty rollouts needs twenty such directories. Copying
the weights twenty times would cost gigabytes for a real model; instead `prepare(v, source)`
makes `publish_dir/v<v>/` holding symbolic links to every file of the source (by absolute path)
and a manifest of version v carrying the source's per-tensor checksums. Workers read through the
links and verify every tensor against that manifest exactly as for any published checkpoint.

Contract: publish_dir and the sources must be visible at the same paths on every worker (true of a
local cluster; on a real fleet, shared storage). A source without a manifest is hashed once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from epochserve.errors import ConfigError

if TYPE_CHECKING:
    from epochserve.worker.weights.manifest import TensorEntry


class VersionPublisher:
    def __init__(self, publish_dir: Path) -> None:
        self.publish_dir = publish_dir
        self._tensors: dict[Path, dict[str, TensorEntry]] = {}

    def prepare(self, version: int, source: Path) -> tuple[Path, str]:
        """Write `publish_dir/v<version>` from `source`; returns (its path, its manifest checksum).

        A directory of that name left by an earlier run is replaced only if it is one of ours
        (it holds a manifest); anything else there raises ConfigError rather than being deleted.
        """
        # The manifest module imports torch: loaded here, on the first rollout, not at CLI start.
        from epochserve.worker.weights.manifest import MANIFEST_NAME, Manifest

        source = source.resolve()
        target = self.publish_dir.resolve() / f"v{version}"
        if target.exists():
            if not (target / MANIFEST_NAME).is_file():
                raise ConfigError(
                    f"{target} exists and is not a published version: remove it or pick another dir"
                )
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for entry in sorted(source.iterdir()):
            if entry.is_file() and entry.name != MANIFEST_NAME:
                os.symlink(entry, target / entry.name)
        manifest = Manifest(version, self._source_tensors(source))
        manifest.write(target)
        return target, manifest.checksum

    def warm_up(self, sources: tuple[Path, ...]) -> None:
        """Load every source's per-tensor checksums now (hashing those without a manifest)."""
        for source in sources:
            self._source_tensors(source.resolve())

    def _source_tensors(self, source: Path) -> dict[str, TensorEntry]:
        from epochserve.worker.weights.manifest import MANIFEST_NAME, Manifest, manifest_of_checkpoint

        if source not in self._tensors:
            if (source / MANIFEST_NAME).is_file():
                self._tensors[source] = Manifest.read(source).tensors
            else:
                self._tensors[source] = manifest_of_checkpoint(0, source).tensors
        return self._tensors[source]
