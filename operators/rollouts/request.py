"""Typed view of a PolicyRollout object (validated and defaulted by the API server)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epochserve.controlplane.store.records import DrainPolicy
from epochserve.operators.spec import SpecError


@dataclass(frozen=True, slots=True)
class RolloutRequest:
    """What a PolicyRollout asks for; `generation` is the metadata.generation it was read at."""

    name: str
    namespace: str
    cluster: str
    version: int
    source: str
    drain: DrainPolicy
    generation: int
    drain_deadline: float | None = None  # spec.drainDeadlineSeconds


def parse_rollout(body: Mapping[str, Any]) -> RolloutRequest:
    """Build a RolloutRequest; raise SpecError when a field is missing or out of range."""
    try:
        meta, spec = body["metadata"], body["spec"]
        drain = spec.get("drain", "overlap")
        version = int(spec["version"])
        request = RolloutRequest(
            name=meta["name"],
            namespace=meta["namespace"],
            cluster=spec["clusterRef"]["name"],
            version=version,
            source=str(spec["source"]),
            drain=DrainPolicy(drain) if drain in set(DrainPolicy) else DrainPolicy.FINISH,
            generation=int(meta.get("generation", 1)),
            drain_deadline=_seconds(spec.get("drainDeadlineSeconds")),
        )
    except KeyError as missing:
        raise SpecError(f"PolicyRollout is missing field {missing}") from None
    if drain not in set(DrainPolicy) or version < 1 or not request.source:
        raise SpecError(f"PolicyRollout {request.name}: bad drain {drain!r}, version or source")
    return request


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise SpecError(f"drainDeadlineSeconds {value!r}: must be a number of seconds >= 0")
    return float(value)
