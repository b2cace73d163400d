"""What the engine reports after each step, per sequence.

Created by Engine (step, abort), consumed by the Worker service, which turns them into
GenerateResponse messages. Immutable: they cross from the engine thread to the server's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from epochserve.worker.engine.sequence import FinishReason, Sequence


@dataclass(frozen=True, slots=True)
class FinishInfo:
    """The end of one sample and the trace of how it was produced."""

    reason: FinishReason
    num_prompt_tokens: int
    num_generated_tokens: int
    seed: int
    prefix_cache_hit_blocks: int
    num_preemptions: int
    queue_seconds: float
    prefill_seconds: float
    decode_seconds: float
    abort_reason: str = ""
    error: str = ""

    @classmethod
    def of(cls, seq: Sequence) -> FinishInfo:
        assert seq.finish_reason is not None, "FinishInfo.of takes a finished sequence"
        t = seq.times
        scheduled = t.first_scheduled if t.first_scheduled is not None else t.arrival
        first = t.first_token if t.first_token is not None else scheduled
        last = t.last_token if t.last_token is not None else first
        return cls(
            reason=seq.finish_reason,
            num_prompt_tokens=len(seq.prompt_token_ids),
            num_generated_tokens=seq.num_generated_tokens,
            seed=seq.seed,
            prefix_cache_hit_blocks=seq.num_prefix_hit_blocks,
            num_preemptions=seq.num_preemptions,
            queue_seconds=scheduled - t.arrival,
            prefill_seconds=first - scheduled,
            decode_seconds=last - first,
            abort_reason=seq.abort_reason,
            error=seq.error,
        )


class SequenceOutput(NamedTuple):
    """New tokens of one sample from one step, and its finish when it ended in that step.
    A NamedTuple: one is made per sample per step, ~3x faster than a frozen dataclass."""

    request_id: str
    sample_index: int
    policy_version: int
    token_ids: tuple[int, ...] = ()
    processed_logprobs: tuple[float, ...] = ()
    raw_logprobs: tuple[float, ...] = ()  # empty unless requested
    top_logprobs: tuple[tuple[tuple[int, ...], tuple[float, ...]], ...] = ()  # empty unless requested
    support_sizes: tuple[int, ...] = ()  # empty unless requested
    finish: FinishInfo | None = None
    prompt_logprobs: tuple[float, ...] = ()  # with a sample's first token, when requested
    # return_routed_experts (engine/routing.py): [len(token_ids), moe layers, top_k] expert ids, and
    # with a sample's first token its prompt's [prompt tokens, moe layers, top_k] (views of rows that
    # never change)
    routed_experts: np.ndarray | None = None
    prompt_routed_experts: np.ndarray | None = None
