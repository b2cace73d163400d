"""StartRequest: a validated request to roll out a version, and the rules for accepting one."""

from __future__ import annotations

import math
from dataclasses import dataclass

from epochserve.controlplane.store.keyspace import check_version
from epochserve.controlplane.store.records import DrainPolicy
from epochserve.controlplane.store.state import ClusterState
from epochserve.errors import EpochConflictError, InvalidRequestError, RolloutBusyError, RolloutExistsError


@dataclass(frozen=True, slots=True)
class StartRequest:
    """What StartRollout asks for. Invalid fields raise InvalidRequestError (INVALID_ARGUMENT)."""

    version: int
    source: str  # checkpoint path, or "nccl"
    drain: DrainPolicy
    manifest_checksum: str | None = None  # expected checksum; None: whatever all workers agree on
    stage_timeout: float | None = None  # seconds; None: the coordinator's default
    commit_timeout: float | None = None  # seconds; None: the coordinator's default
    # seconds after the commit that v-1 sequences may still run (then ABORT); None: no limit
    drain_deadline: float | None = None

    def __post_init__(self) -> None:
        try:
            check_version(self.version)
        except ValueError as e:
            raise InvalidRequestError("version", str(e)) from None
        if not self.source.strip():
            raise InvalidRequestError("source", "name a checkpoint path or 'nccl'")
        if self.manifest_checksum == "":
            raise InvalidRequestError("manifest_checksum", "leave it unset rather than empty")
        for name in ("stage_timeout", "commit_timeout"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidRequestError(name, "must be a finite number of seconds > 0")
        deadline = self.drain_deadline
        if deadline is not None and not (math.isfinite(deadline) and deadline >= 0):
            raise InvalidRequestError("drain_deadline", "must be a finite number of seconds >= 0")

    def check_drain_deadline(self, commit_timeout: float) -> None:
        """The commit timeout fences a worker still draining, so a deadline must come before it."""
        if self.drain_deadline is not None and self.drain_deadline >= commit_timeout:
            raise InvalidRequestError(
                "drain_deadline",
                f"{self.drain_deadline:g} s is not below the commit timeout ({commit_timeout:g} s), "
                "which fences a worker still draining",
            )


def check_startable(state: ClusterState, request: StartRequest) -> None:
    """Raise unless `request` may start on `state`. In this order, so that a concurrent duplicate
    of a start reads as a duplicate rather than as "a rollout is in flight":
    - rollouts/<v> exists, whatever its phase (versions are used once) → RolloutExistsError;
    - v is not above the committed epoch → EpochConflictError;
    - another rollout is in flight → RolloutBusyError (an EpochConflictError that may pass later);
    - v is not above every version tried before (versions strictly increase) → EpochConflictError.
    """
    v = request.version
    if v in state.rollouts:
        raise RolloutExistsError(f"a rollout of v{v} already exists ({state.rollouts[v].value.phase})")
    if v <= state.committed_version:
        raise EpochConflictError(f"v{v} is not above the committed epoch v{state.committed_version}")
    flying = state.in_flight()
    if flying is not None:
        raise RolloutBusyError(f"rollout v{flying.value.version} is in flight ({flying.value.phase})")
    if v <= state.highest_version:
        raise EpochConflictError(f"v{v} is not above v{state.highest_version}, the highest version tried")
