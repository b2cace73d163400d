"""Token embedding and the output projection (lm_head), split over the vocabulary across ranks.

The lm_head runs in fp32 by default (DESIGN.md §1): hidden states are upcast and multiplied by an
fp32 copy of the weight, so logits, softmax and logprobs never pass through bf16. A bf16 lm_head
was one of the four silent train-inference mismatches of the 2026 post-mortem.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from epochserve.worker.layers.context import LayerContext
from epochserve.worker.layers.linear import copy_checked
from epochserve.worker.layers.weight_source import WeightSource


class _VocabSlice(nn.Module):
    """Rows [vocab_start, vocab_start + rows) of a [vocab, hidden] table; padding rows stay zero."""

    def __init__(self, vocab_size: int, hidden_size: int, ctx: LayerContext, dtype: torch.dtype) -> None:
        """`dtype` may differ from ctx.dtype: the lm_head's table is fp32 by default."""
        super().__init__()
        tp = ctx.tp
        self.tp = tp
        self.ops = ctx.ops
        self.vocab_size = vocab_size
        self.rows = -(-vocab_size // tp.size)  # ceil: the last rank may hold padding rows
        self.vocab_start = tp.rank * self.rows
        self.weight = nn.Parameter(torch.zeros(self.rows, hidden_size, dtype=dtype), requires_grad=False)

    @property
    def num_real_rows(self) -> int:
        return max(0, min(self.rows, self.vocab_size - self.vocab_start))

    def load(self, param_name: str, source: WeightSource, shard_id: None, out: torch.Tensor) -> None:
        real = self.num_real_rows
        copy_checked(out[:real], source.read(0, self.vocab_start, real).to(out.dtype), "weight")


class VocabEmbedding(_VocabSlice):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.rows)
        embedded = F.embedding(local.masked_fill(outside, 0), self.weight)
        embedded = embedded.masked_fill(outside[:, None], 0)
        return self.tp.all_reduce(embedded)


class LMHead(_VocabSlice):
    """logits = hidden · Wᵀ in the head's dtype (fp32 by default), gathered over ranks: [n, vocab]."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.ops.linear(hidden.to(self.weight.dtype), self.weight)
        return self.tp.all_gather_last_dim(logits)[:, : self.vocab_size]
