"""Balancing policies, one class per file behind the Policy interface (base.py).

`make_policy(name)` builds one by its --policy name: least-tokens (default), prefix-affinity,
round-robin.
"""

from __future__ import annotations

from epochserve.router.policies.base import Candidate, Policy, RouteRequest, estimate_cost
from epochserve.router.policies.least_tokens import LeastTokensPolicy
from epochserve.router.policies.prefix_affinity import PrefixAffinityPolicy
from epochserve.router.policies.round_robin import RoundRobinPolicy

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (LeastTokensPolicy, PrefixAffinityPolicy, RoundRobinPolicy)
}
DEFAULT_POLICY = LeastTokensPolicy.name


def make_policy(name: str) -> Policy:
    """A fresh policy of that name with its default settings; ValueError for an unknown name."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None


__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Candidate",
    "Policy",
    "RouteRequest",
    "estimate_cost",
    "make_policy",
]
