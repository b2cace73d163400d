"""Token embedding and the output projection (lm_head), split over the vocabulary across ranks.

The lm_head's arithmetic is fp32 by default (docs/design.md §1): products and sums in fp32, fp32 logits,
so softmax and logprobs never pass through bf16 — a bf16 output projection was one of the four
silent train-inference mismatches of the 2026 post-mortem. Its *table* keeps the checkpoint's
precision: a bf16 value is exact in fp32, so an fp32 copy of a bf16 table holds the same numbers
at twice the bytes, and every decode step reads the whole table (1 GB more per token for an 8B
model). model_setup.head_table_dtype picks it; loading a version whose table the stored type
cannot hold exactly is refused, never rounded.
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
        """`dtype` may differ from ctx.dtype (the lm_head's table may be fp32)."""
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

    def _read(self, source: WeightSource) -> torch.Tensor:
        return source.read(0, self.vocab_start, self.num_real_rows)

    def load(self, param_name: str, source: WeightSource, shard_id: None, out: torch.Tensor) -> None:
        copy_checked(out[: self.num_real_rows], self._read(source).to(out.dtype), "weight")


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
    """logits = hidden · Wᵀ, gathered over ranks: [n, vocab]; fp32 arithmetic and logits unless
    fp32_logits=False (the weights' dtype: experiments only)."""

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        ctx: LayerContext,
        dtype: torch.dtype,
        fp32_logits: bool = True,
    ) -> None:
        super().__init__(vocab_size, hidden_size, ctx, dtype)
        self.fp32_logits = fp32_logits

    def load(self, param_name: str, source: WeightSource, shard_id: None, out: torch.Tensor) -> None:
        table = self._read(source)
        stored = table.to(out.dtype)
        if (
            self.fp32_logits
            and out.dtype.itemsize < table.dtype.itemsize
            and not torch.equal(stored.to(table.dtype), table)
        ):
            raise ValueError(
                f"lm_head: this table is {table.dtype} with values {out.dtype} cannot hold, and this worker "
                f"keeps the table in {out.dtype} (its checkpoint's precision); start it from a checkpoint "
                f"whose lm_head is {table.dtype} to serve such versions"
            )
        copy_checked(out[: self.num_real_rows], stored, "weight")

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.fp32_logits:
            logits = self.ops.linear_fp32(hidden, self.weight)
        else:
            logits = self.ops.linear(hidden.to(self.weight.dtype), self.weight)
        return self.tp.all_gather_last_dim(logits)[:, : self.vocab_size]
