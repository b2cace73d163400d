"""Manifest: what a published policy version is, tensor by tensor (name, dtype, shape, checksum).

The publisher writes it next to the checkpoint (MANIFEST_NAME) or sends it with a broadcast; every
worker rank verifies the tensors it reads against it before the worker reports the version staged.
Its own checksum (sha256 of the canonical JSON) is what workers report and the coordinator compares.
JSON with a schema version; anything malformed is refused whole (ManifestError).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from epochserve.errors import EpochserveError
from epochserve.worker.weights.checksum import Checksum, tensor_checksum

MANIFEST_NAME = "epochserve-manifest.json"
SCHEMA_VERSION = 1

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
}


class ManifestError(EpochserveError):
    """A manifest is malformed, or weights do not match it (the rollout must abort)."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    dtype: str  # safetensors dtype name: F32, BF16, F16
    shape: tuple[int, ...]
    checksum: str  # Checksum.hex() of the whole tensor


@dataclass(frozen=True, slots=True)
class Manifest:
    version: int
    tensors: dict[str, TensorEntry]

    def to_json(self) -> str:
        body = {
            "schema": SCHEMA_VERSION,
            "version": self.version,
            "tensors": {
                name: {"dtype": e.dtype, "shape": list(e.shape), "checksum": e.checksum}
                for name, e in sorted(self.tensors.items())
            },
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @property
    def checksum(self) -> str:
        """sha256 of the canonical JSON: equal manifests, equal checksums, on every machine."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            body = json.loads(text)
            if body.get("schema") != SCHEMA_VERSION:
                raise ManifestError(f"manifest schema {body.get('schema')!r}, expected {SCHEMA_VERSION}")
            tensors = {
                str(name): TensorEntry(str(e["dtype"]), tuple(int(d) for d in e["shape"]), str(e["checksum"]))
                for name, e in body["tensors"].items()
            }
            for name, entry in tensors.items():
                Checksum.from_hex(entry.checksum)
                if entry.dtype not in DTYPE_NAMES.values():
                    raise ManifestError(f"manifest: {name} has unsupported dtype {entry.dtype}")
            return cls(version=int(body["version"]), tensors=tensors)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise ManifestError(f"malformed manifest: {exc}") from exc

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{directory} has no {MANIFEST_NAME}: not a published checkpoint")
        return cls.from_json(path.read_text())


def dtype_name(dtype: torch.dtype) -> str:
    if dtype not in DTYPE_NAMES:
        raise ManifestError(f"dtype {dtype} cannot be published (use float32, bfloat16 or float16)")
    return DTYPE_NAMES[dtype]


def manifest_of_tensors(version: int, named: Iterable[tuple[str, torch.Tensor]]) -> Manifest:
    """The manifest of whole tensors (publisher side); runs on the tensors' device."""
    tensors = {
        name: TensorEntry(dtype_name(t.dtype), tuple(t.shape), tensor_checksum(t.detach()).hex())
        for name, t in named
    }
    return Manifest(version=version, tensors=tensors)


def manifest_of_checkpoint(version: int, directory: Path) -> Manifest:
    """Read every tensor of a safetensors checkpoint once and describe it."""
    from epochserve.worker.models.loader import iter_checkpoint

    return manifest_of_tensors(
        version, ((name, source.read()) for name, source in iter_checkpoint(directory))
    )
