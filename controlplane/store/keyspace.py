"""The etcd keyspace of one cluster (docs/design.md §6). The only module that knows key strings.

Everything lives under `/epochserve/<cluster>/`:

    epoch                               the committed policy version (EpochRecord)
    rollouts/<v>                        one record per rollout ever started (RolloutRecord)
    workers/<id>                        one per live worker, bound to its lease (WorkerRecord)
    routers/<id>                        one per live router, bound to its lease (RouterRecord)
    election/coordinator/<lease-hex>    one per coordinator candidate, bound to its lease

Versions in rollout keys are zero-padded to 20 digits (the width of a uint64) so that etcd's
byte order is numeric order.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_VERSION_WIDTH = 20
MAX_VERSION = 2**64 - 1


class KeyKind(enum.Enum):
    """What a key under the cluster root holds."""

    EPOCH = "epoch"
    ROLLOUT = "rollout"
    WORKER = "worker"
    ROUTER = "router"
    CANDIDATE = "candidate"


def check_name(kind: str, name: str) -> str:
    """Return `name` if it can be a cluster, worker or router id (no slashes, 1-128 safe characters)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{kind} {name!r}: use 1-128 of A-Z a-z 0-9 . _ : - (not starting with a symbol)")
    return name


def check_version(version: int) -> int:
    """Return `version` if it is a valid policy version to roll out (1 .. 2**64-1)."""
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise ValueError(f"version {version!r}: must be an integer in [1, 2**64-1]")
    return version


@dataclass(frozen=True, slots=True)
class Keyspace:
    """Key builder and parser for one cluster name."""

    cluster: str

    def __post_init__(self) -> None:
        check_name("cluster", self.cluster)

    @property
    def root(self) -> bytes:
        """Prefix of every key of the cluster (ends with '/')."""
        return f"/epochserve/{self.cluster}/".encode()

    def epoch(self) -> bytes:
        return self.root + b"epoch"

    def rollouts_prefix(self) -> bytes:
        return self.root + b"rollouts/"

    def rollout(self, version: int) -> bytes:
        return self.rollouts_prefix() + str(check_version(version)).zfill(_VERSION_WIDTH).encode()

    def workers_prefix(self) -> bytes:
        return self.root + b"workers/"

    def worker(self, worker_id: str) -> bytes:
        return self.workers_prefix() + check_name("worker id", worker_id).encode()

    def routers_prefix(self) -> bytes:
        return self.root + b"routers/"

    def router(self, router_id: str) -> bytes:
        return self.routers_prefix() + check_name("router id", router_id).encode()

    def election_prefix(self) -> bytes:
        return self.root + b"election/coordinator/"

    def candidate(self, lease_id: int) -> bytes:
        """A candidate's key is named after its lease, as in etcd's concurrency package: one
        campaign per lease, and the key dies with the lease."""
        return self.election_prefix() + format(lease_id, "016x").encode()

    def classify(self, key: bytes) -> tuple[KeyKind, str] | None:
        """Parse a key of this cluster into (kind, name); None for keys this build does not know.

        The name is the rollout version as a decimal string, the worker/router id, or the candidate's
        lease in hex; "" for the epoch."""
        if not key.startswith(self.root):
            return None
        rest = key[len(self.root) :].decode(errors="replace")
        if rest == "epoch":
            return KeyKind.EPOCH, ""
        for kind, prefix in (
            (KeyKind.ROLLOUT, "rollouts/"),
            (KeyKind.WORKER, "workers/"),
            (KeyKind.ROUTER, "routers/"),
            (KeyKind.CANDIDATE, "election/coordinator/"),
        ):
            name = rest.removeprefix(prefix)
            if name != rest and _valid_name(kind, name):
                return kind, str(int(name)) if kind is KeyKind.ROLLOUT else name
        return None


def _valid_name(kind: KeyKind, name: str) -> bool:
    if kind is KeyKind.ROLLOUT:
        return len(name) == _VERSION_WIDTH and name.isdigit() and 1 <= int(name) <= MAX_VERSION
    return _NAME.fullmatch(name) is not None
