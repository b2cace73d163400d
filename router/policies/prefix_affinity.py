"""PrefixAffinityPolicy: requests that start alike go to the same worker, within a load bound.

The key is a hash of the prompt's first `prefix_tokens` tokens (the first KV blocks, which a
worker's prefix cache keys by their hash chain), or of its first characters for a text prompt.
Workers are ranked for a key by rendezvous hashing (highest score of hash(key, worker) wins), so
an RL group sent as separate requests and a prompt repeated over steps meet the same worker's
prefix cache, and a worker joining or leaving moves only the keys it wins or held.

Bounded imbalance: the first worker in the key's ranking whose outstanding sequences are at most
`load_factor` × the mean over candidates + `slack_seqs` takes the request; the slack lets a group
of n requests stay together on an idle cluster, the factor stops a hot prompt from piling
everything onto one worker (cf. "consistent hashing with bounded loads"). If none fits, the least
loaded worker does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from epochserve.router.policies.base import CHARS_PER_TOKEN_GUESS, Candidate, Policy, RouteRequest


class PrefixAffinityPolicy(Policy):
    name = "prefix-affinity"

    def __init__(self, prefix_tokens: int = 64, load_factor: float = 1.25, slack_seqs: int = 16) -> None:
        if prefix_tokens < 1 or load_factor < 1.0 or slack_seqs < 0:
            raise ValueError("prefix_tokens >= 1, load_factor >= 1 and slack_seqs >= 0 required")
        self.prefix_tokens = prefix_tokens
        self.load_factor = load_factor
        self.slack_seqs = slack_seqs

    def affinity_key(self, request: RouteRequest) -> bytes:
        """Bytes that requests sharing a prompt prefix have in common."""
        if request.prompt_token_ids:
            head = request.prompt_token_ids[: self.prefix_tokens]
            return b"t" + b",".join(str(t).encode() for t in head)
        return b"s" + request.prompt_text[: self.prefix_tokens * CHARS_PER_TOKEN_GUESS].encode()

    def ranking(self, request: RouteRequest, candidates: Sequence[Candidate]) -> list[Candidate]:
        """Candidates in the key's rendezvous order (the preferred worker first)."""
        key = self.affinity_key(request)
        return sorted(candidates, key=lambda c: _score(key, c.worker_id), reverse=True)

    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        mean = sum(c.outstanding_seqs for c in candidates) / len(candidates)
        bound = self.load_factor * mean + self.slack_seqs
        for candidate in self.ranking(request, candidates):
            if candidate.outstanding_seqs + request.n <= bound:
                return candidate
        return min(candidates, key=lambda c: (c.outstanding_seqs, c.outstanding_tokens))


def _score(key: bytes, worker_id: str) -> int:
    digest = hashlib.blake2b(key, digest_size=8, person=b"epochserve-aff", key=worker_id.encode()[:64])
    return int.from_bytes(digest.digest(), "big")
