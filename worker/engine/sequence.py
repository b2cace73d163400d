"""Sequence: one sample of one request, from admission to finish.

Created by Engine.add_request (n per request), scheduled by Scheduler, given KV blocks by
BlockManager, advanced by Engine after each step. Only the engine thread touches it.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import numpy as np

from epochserve.sampling import SamplingParams
from epochserve.worker.engine.routing import RoutingLog
from epochserve.worker.engine.sampling_noise import sequence_key


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # not yet holding blocks (new, or preempted and to be recomputed)
    RUNNING = "running"  # holds blocks; prefill in progress or decoding
    FINISHED = "finished"


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS or a stop token was generated (and returned)
    LENGTH = "length"  # max_tokens or the context length reached
    ABORT = "abort"  # client cancel, deadline, or a rollout with drain=abort
    ERROR = "error"  # a runtime guard tripped; see Sequence.error


@dataclass(slots=True)
class SequenceTimes:
    """Wall-clock instants (time.monotonic) for the diagnostics trace."""

    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None


@dataclass(eq=False, slots=True)
class Sequence:
    seq_id: int
    request_id: str
    sample_index: int
    prompt_token_ids: list[int]
    sampling: SamplingParams
    max_tokens: int  # resolved generation budget
    seed: int  # the request's seed (drawn by the engine when the request had none)
    policy_version: int  # the version whose weights produce every token of this sequence
    # Sibling samples wait until this sequence (sample 0) has computed the prompt, so that they
    # find its blocks in the prefix cache instead of computing the prompt n times.
    prefill_leader: Sequence | None = None
    output_token_ids: list[int] = field(default_factory=list)
    processed_logprobs: list[float] = field(default_factory=list)
    raw_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[tuple[list[int], list[float]]] = field(default_factory=list)
    support_sizes: list[int] = field(default_factory=list)  # when the request asked for them
    # return_prompt_logprobs: prompt token i+1's processed logprob at each scored position i, in
    # order (sample 0 scores the prompt for its siblings; see prompt_scores).
    prompt_logprobs: list[float] = field(default_factory=list)
    # return_routed_experts: the routing of each computed (or cached) position, in order (routing.py)
    routing: RoutingLog | None = None
    # OUTPUT_MODE_FINAL: the engine reports this sequence once, at its end, with all its tokens
    # (no per-step output for the server to handle).
    final_only: bool = False
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: FinishReason | None = None
    abort_reason: str = ""
    error: str = ""
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose keys/values are in the cache
    num_prefix_hit_blocks: int = 0  # prompt blocks found in the prefix cache at first admission
    num_preemptions: int = 0
    # Chained hashes of the full blocks of token_ids, filled lazily by BlockManager (the tokens at
    # existing positions never change, so neither do these).
    block_hashes: list[bytes] = field(default_factory=list)
    # Leading blocks of block_table already offered to the prefix cache (BlockManager): each step
    # then looks at the new full blocks only, not at the whole table again.
    num_indexed_blocks: int = 0
    # Leading blocks whose routing was offered to their cache entries (BlockManager, routing replay).
    num_routed_blocks: int = 0
    # This sequence's row in the decode graphs' block table on the device (BlockManager hands rows
    # out while the sequence holds blocks), and how many of its blocks that row already holds.
    table_row: int | None = None
    num_synced_blocks: int = 0
    times: SequenceTimes = field(default_factory=SequenceTimes)
    noise_base: int = field(init=False)  # sampling_noise.sequence_key(seed, sample_index)

    def __post_init__(self) -> None:
        self.noise_base = sequence_key(self.seed, self.sample_index)

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def tokens_between(self, start: int, end: int) -> list[int]:
        """token_ids[start:end] without building the whole list (a decode step reads one token)."""
        num_prompt = len(self.prompt_token_ids)
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt : end - num_prompt]
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - num_prompt]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def num_generated_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def num_prompt_scores(self) -> int:
        """How many prompt logprobs the request asked for: one per prompt token after the first."""
        return len(self.prompt_token_ids) - 1 if self.sampling.return_prompt_logprobs else 0

    def prompt_scores(self) -> list[float]:
        """The prompt's logprobs once complete (this sample's own, or its leader's), else []."""
        for source in (self, self.prefill_leader):
            if source is not None and len(source.prompt_logprobs) == self.num_prompt_scores:
                return source.prompt_logprobs
        return []

    def must_score_prompt(self) -> bool:
        """Whether this sample's prompt steps compute logprobs: they are asked for and not yet all
        known. Such a sample computes its whole prompt (no prefix-cache hit: a hit skips positions)."""
        return self.num_prompt_scores > 0 and not self.prompt_scores()

    def prompt_routing(self) -> np.ndarray | None:
        """The routing of every prompt position [prompt tokens, layers, top_k] once logged, else None.
        Each sample returns its own: prompt blocks it found in the prefix cache carry the routing
        that computed their keys/values, the rest is its own computation."""
        num_prompt = len(self.prompt_token_ids)
        if self.routing is None or self.routing.length < num_prompt:
            return None
        return self.routing.rows(0, num_prompt)

    def token_routing(self, first: int, stop: int) -> np.ndarray:
        """The routing of output tokens first .. stop - 1 [tokens, layers, top_k]: each token's is that
        of the position before it, the input of the step that sampled it."""
        assert self.routing is not None
        num_prompt = len(self.prompt_token_ids)
        return self.routing.rows(num_prompt - 1 + first, num_prompt - 1 + stop)

    def waits_for_leader(self) -> bool:
        """True while sample 0 of the request has not yet computed the whole prompt."""
        leader = self.prefill_leader
        if leader is None or leader.is_finished:
            return False
        return leader.num_computed_tokens < len(leader.prompt_token_ids)
