"""The balancing policy interface: which of the workers serving a request's version runs it.

A policy only chooses. The dispatcher (router/dispatch.py) has already kept the candidates that
serve the pinned version, are READY, have room and were not tried before for this request; it
then reserves the chosen worker's load. Policies are plain synchronous objects called on the
router's event loop, so they need no locks; they must not block and must return one of the
candidates they were given.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a policy may look at in a request. Created by the request flow at admission."""

    request_id: str
    prompt_token_ids: tuple[int, ...]  # empty for a text prompt
    prompt_text: str  # "" for a token prompt
    n: int  # samples: the request runs as n sequences on one worker
    cost_tokens: int  # estimated tokens the request adds to a worker's load (see estimate_cost)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One worker a request may go to, with its load as this router sees it (its own requests only:
    routers do not share load, each balances what it sends)."""

    worker_id: str
    outstanding_tokens: int  # estimated tokens still to process for this router's requests there
    outstanding_seqs: int  # sequences this router has running or queued there


class Policy(abc.ABC):
    """Choose a worker for a request. One class per file under router/policies/."""

    name: ClassVar[str]  # the --policy value

    @abc.abstractmethod
    def choose(self, request: RouteRequest, candidates: Sequence[Candidate]) -> Candidate:
        """One of `candidates` (never empty, ordered by worker id)."""


# A request without max_tokens may run to the context's end; most stop far earlier, so its cost
# is counted as at most this many tokens per sample (only the balance depends on it).
DEFAULT_OUTPUT_ESTIMATE = 256
# Characters per token when a text prompt's length must be guessed before the worker tokenizes it.
CHARS_PER_TOKEN_GUESS = 4


def estimate_cost(num_prompt_tokens: int, max_tokens: int | None, n: int) -> int:
    """Tokens a request makes a worker process: the prompt (prefilled once, shared by the samples
    through the prefix cache) plus each sample's output."""
    output = DEFAULT_OUTPUT_ESTIMATE if max_tokens is None else min(max_tokens, DEFAULT_OUTPUT_ESTIMATE)
    return num_prompt_tokens + n * output
