"""Sampling parameters and request rules shared by the worker, the router and clients.

Both the router and the worker validate a request with these same rules (docs/design.md §6), so a bad
request is refused with the same INVALID_ARGUMENT message wherever it lands. Pure Python: no torch.
The trainer's side of the processing — the processed log-softmax rebuilt from full logits — is in
`epochserve.sampling.reference` (needs torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from epochserve.errors import InvalidRequestError

# The most top-N alternatives a request may ask for per token.
MAX_NUM_TOP_LOGPROBS = 20


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a served model accepts; the worker reports these, the router checks against them."""

    vocab_size: int
    max_model_len: int  # longest prompt + generation, in tokens
    max_n: int = 16  # most samples per request


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token of one request (all its n samples share these).

    temperature == 0 means greedy. Then logprobs describe the temperature-1 distribution after
    top-k/top-p/min-p (README: "What logprobs mean"). Construction validates every field and raises
    InvalidRequestError naming the field; an instance is therefore always valid.
    """

    temperature: float = 1.0
    top_p: float = 1.0  # (0, 1]; 1 is off
    top_k: int = 0  # 0 is off
    min_p: float = 0.0  # [0, 1]; 0 is off
    max_tokens: int | None = None  # None: up to the context length
    seed: int | None = None  # None: the worker draws one and reports it
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)
    ignore_eos: bool = False
    num_top_logprobs: int = 0
    return_raw_logprobs: bool = False
    return_support_size: bool = False  # per token: how many tokens the processed distribution kept
    return_prompt_logprobs: bool = False  # the processed logprob of every prompt token after the first
    return_routed_experts: bool = False  # MoE models: the experts each position was routed to

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequestError(
                "sampling.temperature", f"must be finite and >= 0, got {self.temperature}"
            )
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise InvalidRequestError("sampling.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequestError("sampling.top_k", f"must be >= 0 (0 disables it), got {self.top_k}")
        if not (math.isfinite(self.min_p) and 0.0 <= self.min_p <= 1.0):
            raise InvalidRequestError("sampling.min_p", f"must be in [0, 1], got {self.min_p}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequestError("sampling.max_tokens", f"must be >= 1, got {self.max_tokens}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise InvalidRequestError("sampling.seed", f"must fit in 64 unsigned bits, got {self.seed}")
        if not 0 <= self.num_top_logprobs <= MAX_NUM_TOP_LOGPROBS:
            raise InvalidRequestError(
                "sampling.num_top_logprobs",
                f"must be in [0, {MAX_NUM_TOP_LOGPROBS}], got {self.num_top_logprobs}",
            )

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_filters(self) -> bool:
        """Whether any of top-k, top-p, min-p cuts the distribution."""
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


def validate_prompt(prompt_token_ids: Sequence[int], limits: ModelLimits) -> None:
    """Raise InvalidRequestError unless every id is in the vocabulary and the prompt is non-empty."""
    if len(prompt_token_ids) == 0:
        raise InvalidRequestError("prompt_token_ids", "the prompt is empty")
    if len(prompt_token_ids) >= limits.max_model_len:
        raise InvalidRequestError(
            "prompt_token_ids",
            f"prompt of {len(prompt_token_ids)} tokens leaves no room in the context "
            f"of {limits.max_model_len}",
        )
    bad = [t for t in prompt_token_ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise InvalidRequestError(
            "prompt_token_ids", f"token id {bad[0]} is outside the vocabulary [0, {limits.vocab_size})"
        )


def resolve_max_tokens(params: SamplingParams, num_prompt_tokens: int, limits: ModelLimits) -> int:
    """The generation budget of a request; raises when prompt + max_tokens exceeds the context."""
    room = limits.max_model_len - num_prompt_tokens
    if params.max_tokens is None:
        return room
    if params.max_tokens > room:
        raise InvalidRequestError(
            "sampling.max_tokens",
            f"prompt ({num_prompt_tokens}) + max_tokens ({params.max_tokens}) exceeds the context "
            f"length {limits.max_model_len}",
        )
    return params.max_tokens


def validate_n(n: int, limits: ModelLimits) -> None:
    if not 1 <= n <= limits.max_n:
        raise InvalidRequestError("n", f"must be in [1, {limits.max_n}], got {n}")


def validate_stop_tokens(stop_token_ids: Sequence[int], limits: ModelLimits) -> None:
    bad = [t for t in stop_token_ids if not 0 <= t < limits.vocab_size]
    if bad:
        raise InvalidRequestError(
            "sampling.stop_token_ids", f"token id {bad[0]} is outside the vocabulary [0, {limits.vocab_size})"
        )
