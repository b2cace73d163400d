"""The trainer's side of processed logprobs: rebuild, from full logits, the distribution the engine
sampled from. This is the reference implementation a trainer copies (README "What logprobs mean");
`epochctl verify` uses it.

The rule, exactly as the engine applies it (worker/engine/sampler.py):
1. processed logits z = fp32 logits / fp32 temperature (temperature 1 for greedy requests);
2. rank the tokens by z, ties broken by the lower token id;
3. top-k keeps the first k; top-p keeps a token iff the probability mass of the tokens ranked
   before it (under the top-k distribution) is < top_p; min-p keeps a token iff its probability is
   >= min_p x the top token's; the top token always stays. Probabilities and their prefix sums are
   fp64, so rounding cannot move a boundary whose margin is above 1e-9; top_p and min_p are taken at
   their fp32 value (their wire type);
4. processed logprobs = the log-softmax of z over the kept tokens (-inf elsewhere).
Each filter keeps a prefix of the ranking, so the kept set is the top `support_size` tokens.

A trainer's logits differ from the engine's in their last bits (other kernels, another batch). Where
a boundary lies within that noise of its threshold, the rule alone may keep one token more or fewer
than the engine did. The engine's support sizes (SamplingParams.return_support_size) remove that
ambiguity: given them, the support is the top support_size tokens, and the recompute differs from
the engine only by the logits' own difference.
"""

from __future__ import annotations

import torch

from epochserve.sampling import SamplingParams


def as_float32(value: float) -> float:
    """The value a float32 wire field carries (what the engine compares against)."""
    return float(torch.tensor(value, dtype=torch.float32))


def scaled_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Step 1: [num_positions, vocab] fp32 logits divided by the request's fp32 temperature."""
    logits = logits.float()
    if params.is_greedy or params.temperature == 1.0:
        return logits
    return logits / torch.tensor(params.temperature, dtype=torch.float32, device=logits.device)


def rule_support_sizes(scaled: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Step 3: how many top-ranked tokens the rule keeps at each position. [num_positions] int64."""
    num_positions, vocab = scaled.shape
    ranked = scaled.sort(dim=-1, descending=True, stable=True).values.double()
    sizes = torch.full((num_positions,), vocab, dtype=torch.int64, device=scaled.device)
    if params.top_k:
        sizes.clamp_(max=params.top_k)
    if params.top_p < 1.0:
        ranks = torch.arange(vocab, device=scaled.device)
        inside_k = ranks[None, :] < sizes[:, None]
        probs = ranked.masked_fill(~inside_k, float("-inf")).softmax(dim=-1)
        mass_before = torch.nn.functional.pad(probs.cumsum(dim=-1)[:, :-1], (1, 0))
        # mass_before only grows along the ranking, so the kept tokens are a prefix of it.
        sizes = torch.minimum(sizes, (mass_before < as_float32(params.top_p)).sum(dim=-1))
    if params.min_p > 0.0:
        ratio_to_top = (ranked - ranked[:, :1]).exp()  # p_i / p_top: the normalisation cancels
        sizes = torch.minimum(sizes, (ratio_to_top >= as_float32(params.min_p)).sum(dim=-1))
    return sizes.clamp_(min=1)


def processed_logits(
    logits: torch.Tensor, params: SamplingParams, support_sizes: torch.Tensor | None = None
) -> torch.Tensor:
    """[num_positions, vocab] fp32: the scaled logits of the kept tokens, -inf elsewhere.

    support_sizes: [num_positions], the engine's (GenerateChunk.support_sizes); None applies the rule
    to these logits."""
    scaled = scaled_logits(logits, params)
    sizes = rule_support_sizes(scaled, params) if support_sizes is None else support_sizes
    sizes = torch.as_tensor(sizes, dtype=torch.int64, device=scaled.device)
    if sizes.shape != scaled.shape[:1]:
        raise ValueError(f"support_sizes has shape {tuple(sizes.shape)}, expected ({scaled.shape[0]},)")
    order = scaled.sort(dim=-1, descending=True, stable=True).indices
    ranks = order.argsort(dim=-1)  # the inverse permutation: each token's place in the ranking
    return scaled.masked_fill(ranks >= sizes[:, None], float("-inf"))


def processed_logprobs(
    logits: torch.Tensor, params: SamplingParams, support_sizes: torch.Tensor | None = None
) -> torch.Tensor:
    """[num_positions, vocab] fp32 processed log-softmax (step 4)."""
    return torch.log_softmax(processed_logits(logits, params, support_sizes), dim=-1)


def token_logprobs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    params: SamplingParams,
    support_sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """[num_positions] fp32: the processed logprob of token_ids[i] under logits[i]; logits[i] are the
    logits that produced token i (the position just before it)."""
    table = processed_logprobs(logits, params, support_sizes)
    ids = torch.as_tensor(token_ids, dtype=torch.int64, device=table.device)
    return table.gather(1, ids[:, None])[:, 0]
