"""Kubernetes-style status conditions, each carrying the generation it was computed from."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

Condition = dict[str, Any]
ConditionStatus = Literal["True", "False", "Unknown"]


def utc_now() -> str:
    """RFC 3339 timestamp in UTC with second precision, as Kubernetes writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[Condition]:
    """Return `conditions` with `type_` set; other types are kept as they were.

    lastTransitionTime changes only when the status flips, so rewriting an unchanged condition yields
    an identical list (and no status patch). observedGeneration is always the caller's generation: it
    says which spec the condition describes.
    """
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    updated: Condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
        "observedGeneration": generation,
    }
    others = [c for c in conditions if c.get("type") != type_]
    return sorted([*others, updated], key=lambda c: str(c["type"]))
