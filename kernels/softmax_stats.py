"""Per-row softmax statistics of logits: what a sampler needs from a [rows, vocab] fp32 table
without materializing the log-softmax (reference for kernels/softmax_stats_triton.py).

For each row: the index of its largest value (the first one on a tie, as torch.argmax), its
logsumexp (a token's logprob is then `logit - logsumexp`), and whether every value is finite.
-inf entries (tokens a filter removed) count as probability 0; a row of only -inf has logsumexp -inf.
"""

from __future__ import annotations

import torch


def softmax_stats_torch(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [rows, vocab] fp32 → (argmax int64 [rows], logsumexp fp32 [rows], all finite bool [rows])."""
    return logits.argmax(dim=-1), torch.logsumexp(logits, dim=-1), torch.isfinite(logits).all(dim=-1)
