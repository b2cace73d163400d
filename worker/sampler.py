"""Sampler: picks each sequence's next token and reports its processed fp32 logprob.

Processing, in the order Hugging Face `generate` applies it: temperature, top-k, top-p, min-p. The
processed logprob of a token is the log-softmax of the processed logits at that position, i.e. the
log-probability under the distribution the token was actually drawn from (DESIGN.md §1). Greedy
requests (temperature 0) take the argmax and report the same processing at temperature 1.

Sampling noise is counter-based (sampling_noise.py): sequence s draws its token at output position p
with noise keyed by (request seed, sample index, p). A request therefore replays the same tokens
whatever else is in the batch, after a preemption recompute, and on CPU or GPU alike.

Runtime guards: a row with non-finite logits, or a token outside the processed support or the
vocabulary, is reported as an error for that sequence alone; no token is returned for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from epochserve.worker.sampling_noise import gumbel_noise, noise_key
from epochserve.worker.sequence import Sequence


@dataclass(slots=True)
class SamplerOutput:
    """Created by Sampler.sample, consumed by Engine. Row i belongs to the i-th sequence passed in."""

    token_ids: list[int]  # [num_seqs]
    processed_logprobs: list[float]  # [num_seqs]
    raw_logprobs: list[float | None]  # [num_seqs]; None unless requested
    top_logprobs: list[tuple[list[int], list[float]] | None]  # [num_seqs]; None unless requested
    errors: list[str | None]  # [num_seqs]; a message when a runtime guard tripped


def filter_logits(
    logits: torch.Tensor,  # [num_seqs, vocab] fp32, already divided by temperature
    top_k: torch.Tensor,  # [num_seqs] int64, 0 = off
    top_p: torch.Tensor,  # [num_seqs] fp32, 1 = off
    min_p: torch.Tensor,  # [num_seqs] fp32, 0 = off
) -> torch.Tensor:
    """Set to -inf every token that top-k, then top-p, then min-p removes. The top token always stays."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab)
    remove = ranks[None, :] >= k[:, None]
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    # top-p: drop a token once the tokens strictly more likely already hold top_p of the mass.
    mass_before = probs.cumsum(dim=-1) - probs
    remove |= (mass_before >= top_p[:, None]) & (top_p[:, None] < 1.0)
    remove[:, 0] = False
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    remove |= probs < min_p[:, None] * probs[:, :1]
    remove[:, 0] = False
    filtered = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, filtered)


class Sampler:
    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits: [len(seqs), vocab] fp32 at each sequence's last position."""
        num_seqs, vocab = logits.shape
        device = logits.device
        # One reduction instead of an elementwise check: a row sums to a finite value iff every
        # logit is finite (|logit| is far below the overflow point of a 10^6-term sum).
        is_finite = torch.isfinite(logits.sum(dim=-1))
        logits = torch.where(is_finite[:, None], logits, torch.zeros((), device=device))
        params = [seq.sampling for seq in seqs]
        temperature = torch.tensor([p.temperature if not p.is_greedy else 1.0 for p in params], device=device)
        processed = (
            logits / temperature[:, None] if any(p.temperature not in (0.0, 1.0) for p in params) else logits
        )
        if any(p.has_filters for p in params):
            processed = filter_logits(
                processed,
                torch.tensor([p.top_k for p in params], device=device),
                torch.tensor([p.top_p for p in params], device=device),
                torch.tensor([p.min_p for p in params], device=device),
            )
        processed_logprobs = torch.log_softmax(processed, dim=-1)
        token_ids = self._choose(logits, processed_logprobs, seqs)
        chosen_logprobs = processed_logprobs.gather(1, token_ids[:, None])[:, 0]

        raw: list[float | None] = [None] * num_seqs
        if any(p.return_raw_logprobs for p in params):
            raw_all = torch.log_softmax(logits, dim=-1).gather(1, token_ids[:, None])[:, 0].tolist()
            raw = [value if p.return_raw_logprobs else None for value, p in zip(raw_all, params, strict=True)]
        top: list[tuple[list[int], list[float]] | None] = [None] * num_seqs
        max_top = max(p.num_top_logprobs for p in params)
        if max_top:
            top_values, top_ids = processed_logprobs.topk(min(max_top, vocab), dim=-1)
            top_values_list, top_ids_list = top_values.tolist(), top_ids.tolist()
            for i, p in enumerate(params):
                if p.num_top_logprobs:
                    n = p.num_top_logprobs
                    top[i] = (top_ids_list[i][:n], top_values_list[i][:n])

        tokens = token_ids.tolist()
        chosen = chosen_logprobs.tolist()
        finite = is_finite.tolist()
        errors: list[str | None] = []
        for token, logprob, ok in zip(tokens, chosen, finite, strict=True):
            if not ok:
                errors.append("non-finite logits")
            elif not 0 <= token < vocab:
                errors.append(f"sampled token {token} outside the vocabulary")
            elif logprob == float("-inf"):
                errors.append(f"sampled token {token} outside the processed support")
            else:
                errors.append(None)
        return SamplerOutput(tokens, chosen, raw, top, errors)

    @staticmethod
    def _choose(logits: torch.Tensor, processed_logprobs: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Greedy rows: argmax of the logits. Sampled rows: argmax of processed logprob + Gumbel noise
        keyed by (seed, sample, position) — a draw from exactly the processed distribution."""
        keys = torch.tensor(
            [noise_key(s.seed, s.sample_index, s.num_generated_tokens) for s in seqs], device=logits.device
        )
        sampled = (processed_logprobs + gumbel_noise(keys, logits.shape[-1])).argmax(dim=-1)
        greedy = torch.tensor([s.sampling.is_greedy for s in seqs], device=logits.device)
        return torch.where(greedy, logits.argmax(dim=-1), sampled)
