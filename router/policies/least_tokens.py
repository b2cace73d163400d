"""LeastTokensPolicy (the default): the worker with the fewest outstanding tokens.

Outstanding tokens (prompt plus expected output of what this router has sent there, minus what
has streamed back) track a worker's remaining work better than a request count, because RL
requests differ by orders of magnitude in length. Ties, e.g. an idle cluster, rotate, so that a
trickle of short requests spreads rather than always landing on the first worker.
"""

from __future__ import annotations

from collections.abc import Sequence

from epochserve.router.policies.base import Candidate, Policy, RouteRequest


class LeastTokensPolicy(Policy):
    name = "least-tokens"

    def __init__(self) -> None:
        self._num_ties = 0  # rotates among equally loaded workers

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        lightest = min((c.outstanding_tokens, c.outstanding_seqs) for c in candidates)
        tied = [c for c in candidates if (c.outstanding_tokens, c.outstanding_seqs) == lightest]
        self._num_ties += 1
        return tied[self._num_ties % len(tied)]
