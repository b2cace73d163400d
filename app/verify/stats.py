"""Mismatch statistics between the logprobs an engine returned and a trainer's recompute.

Per sampled token, r = exp(trainer_logprob - sampler_logprob) is the importance ratio a PPO/GSPO
trainer would compute against the sampler. With no train-inference mismatch r = 1 everywhere:
|Δ| = 0, the KL estimate is 0 and no ratio is clipped. The 2026 post-mortem's four mismatches each
showed up as a non-zero clip rate on the very first step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

CLIP_EPSILON = 0.2  # PPO/GSPO ratio clip


@dataclass(frozen=True, slots=True)
class MismatchStats:
    num_sequences: int
    num_tokens: int
    mean_abs_delta: float  # mean |trainer - sampler| logprob over tokens
    max_abs_delta: float
    kl_new_old: float  # per-token estimate of KL(trainer ‖ sampler): mean of r·log r
    token_clip_rate: float  # PPO: share of tokens with |r - 1| > CLIP_EPSILON
    sequence_clip_rate: float  # GSPO: share of sequences whose geometric-mean ratio is clipped

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def within(self, max_abs_delta: float, max_mean_abs_delta: float, max_clip_rate: float) -> bool:
        return (
            self.max_abs_delta <= max_abs_delta
            and self.mean_abs_delta <= max_mean_abs_delta
            and self.token_clip_rate <= max_clip_rate
            and self.sequence_clip_rate <= max_clip_rate
        )


def mismatch_stats(pairs: Sequence[tuple[Sequence[float], Sequence[float]]]) -> MismatchStats:
    """pairs: per sequence, (sampler logprobs, trainer logprobs) of the same tokens."""
    deltas: list[float] = []
    kl_terms: list[float] = []
    clipped_tokens = clipped_sequences = 0
    for sampler, trainer in pairs:
        if len(sampler) != len(trainer):
            raise ValueError("sampler and trainer logprobs must cover the same tokens")
        seq_deltas = [t - s for s, t in zip(sampler, trainer, strict=True)]
        deltas += [abs(d) for d in seq_deltas]
        for d in seq_deltas:
            ratio = math.exp(d)
            kl_terms.append(ratio * d if ratio else 0.0)  # r·log r → 0 as r → 0 (trainer: -inf)
            clipped_tokens += abs(ratio - 1.0) > CLIP_EPSILON
        if seq_deltas:
            sequence_ratio = math.exp(sum(seq_deltas) / len(seq_deltas))
            clipped_sequences += abs(sequence_ratio - 1.0) > CLIP_EPSILON
    n = len(deltas)
    return MismatchStats(
        num_sequences=len(pairs),
        num_tokens=n,
        mean_abs_delta=sum(deltas) / n if n else 0.0,
        max_abs_delta=max(deltas, default=0.0),
        kl_new_old=sum(kl_terms) / n if n else 0.0,
        token_clip_rate=clipped_tokens / n if n else 0.0,
        sequence_clip_rate=clipped_sequences / len(pairs) if pairs else 0.0,
    )
