"""RoundRobinPolicy: each candidate in turn, whatever its load. Predictable, for tests and demos."""

from __future__ import annotations

from collections.abc import Sequence

from epochserve.router.policies.base import Candidate, Policy, RouteRequest


class RoundRobinPolicy(Policy):
    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        chosen = candidates[self._next % len(candidates)]
        self._next += 1
        return chosen
