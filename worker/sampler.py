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

from epochserve.sampling import SamplingParams
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
    batch_invariant: bool = False,
) -> torch.Tensor:
    """Set to -inf every token that top-k, then top-p, then min-p removes. The top token always stays.

    batch_invariant: CUDA's cumsum picks its scan by the number of rows (tests/gpu shows a lone row
    summing differently), so the top-p prefix sums then run one row per call.
    """
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(vocab, device=logits.device)
    k = torch.where(top_k > 0, top_k, vocab)
    remove = ranks[None, :] >= k[:, None]
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    # top-p: drop a token once the tokens strictly more likely already hold top_p of the mass.
    if batch_invariant and probs.shape[0] > 1:
        cumulative = torch.cat([row.cumsum(dim=-1) for row in probs.split(1)])
    else:
        cumulative = probs.cumsum(dim=-1)
    mass_before = cumulative - probs
    remove |= (mass_before >= top_p[:, None]) & (top_p[:, None] < 1.0)
    remove[:, 0] = False
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    remove |= probs < min_p[:, None] * probs[:, :1]
    remove[:, 0] = False
    filtered = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, filtered)


class Sampler:
    def __init__(self, batch_invariant: bool = False) -> None:
        self.batch_invariant = batch_invariant

    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """logits: [len(seqs), vocab] fp32 at each sequence's last position. One device sync."""
        _num_seqs, vocab = logits.shape
        # One reduction instead of an elementwise check: a row sums to a finite value iff every
        # logit is finite (|logit| is far below the overflow point of a 10^6-term sum).
        # A non-finite row only spoils its own results, which the guard below discards.
        is_finite = torch.isfinite(logits.sum(dim=-1))
        params = [seq.sampling for seq in seqs]
        processed_logprobs = torch.log_softmax(self._process(logits, params), dim=-1)
        token_ids = self._choose(logits, processed_logprobs, seqs)
        chosen = processed_logprobs.gather(1, token_ids[:, None])[:, 0]
        wants_raw = [p.return_raw_logprobs for p in params]
        raw = (
            torch.log_softmax(logits, dim=-1).gather(1, token_ids[:, None])[:, 0]
            if any(wants_raw)
            else chosen
        )
        # Everything the host needs in one transfer (token ids < 2^24 are exact in float64).
        host = torch.stack([token_ids.double(), chosen.double(), raw.double(), is_finite.double()]).tolist()
        tokens = [int(t) for t in host[0]]
        top = self._top_logprobs(processed_logprobs, params)
        errors: list[str | None] = []
        for token, logprob, ok in zip(tokens, host[1], host[3], strict=True):
            if not ok:
                errors.append("non-finite logits")
            elif not 0 <= token < vocab:
                errors.append(f"sampled token {token} outside the vocabulary")
            elif logprob == float("-inf"):
                errors.append(f"sampled token {token} outside the processed support")
            else:
                errors.append(None)
        raw_out: list[float | None] = [
            r if want else None for r, want in zip(host[2], wants_raw, strict=True)
        ]
        return SamplerOutput(tokens, host[1], raw_out, top, errors)

    def _process(self, logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Temperature (1 for greedy rows), then top-k, top-p, min-p; logits pass through untouched
        when no row changes them."""
        device = logits.device
        processed = logits
        if any(p.temperature not in (0.0, 1.0) for p in params):
            temperature = torch.tensor([1.0 if p.is_greedy else p.temperature for p in params], device=device)
            processed = logits / temperature[:, None]
        if any(p.has_filters for p in params):
            processed = filter_logits(
                processed,
                torch.tensor([p.top_k for p in params], device=device),
                torch.tensor([p.top_p for p in params], device=device),
                torch.tensor([p.min_p for p in params], device=device),
                self.batch_invariant,
            )
        return processed

    @staticmethod
    def _top_logprobs(
        processed_logprobs: torch.Tensor, params: list[SamplingParams]
    ) -> list[tuple[list[int], list[float]] | None]:
        top: list[tuple[list[int], list[float]] | None] = [None] * len(params)
        max_top = max(p.num_top_logprobs for p in params)
        if max_top:
            values, ids = processed_logprobs.topk(min(max_top, processed_logprobs.shape[-1]), dim=-1)
            values_list, ids_list = values.tolist(), ids.tolist()
            for i, p in enumerate(params):
                if p.num_top_logprobs:
                    top[i] = (ids_list[i][: p.num_top_logprobs], values_list[i][: p.num_top_logprobs])
        return top

    @staticmethod
    def _choose(logits: torch.Tensor, processed_logprobs: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Greedy rows: argmax of the logits. Sampled rows: argmax of processed logprob + Gumbel noise
        keyed by (seed, sample, position) — a draw from exactly the processed distribution."""
        greedy = logits.argmax(dim=-1)
        sampled_rows = [i for i, s in enumerate(seqs) if not s.sampling.is_greedy]
        if not sampled_rows:
            return greedy
        rows = torch.tensor(sampled_rows, device=logits.device)
        keys = torch.tensor(
            [
                noise_key(seqs[i].seed, seqs[i].sample_index, seqs[i].num_generated_tokens)
                for i in sampled_rows
            ],
            device=logits.device,
        )
        noisy = processed_logprobs.index_select(0, rows) + gumbel_noise(keys, logits.shape[-1])
        return greedy.index_copy(0, rows, noisy.argmax(dim=-1))
