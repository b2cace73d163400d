"""The lm_head computes in fp32 whatever its table is stored in, and never rounds a table it loads.

The table keeps the checkpoint's precision (a bf16 table is exact in fp32; an fp32 copy would only
double the bytes read per token): these tests pin which dtype is chosen, that the logits are the
fp32 product of the upcast operands, and that a version whose table the stored dtype cannot hold
exactly is refused rather than rounded (a silent bf16 head is one of the post-mortem's mismatches).
"""

from __future__ import annotations

import pytest
import torch
from fixtures.models import build_tiny_model

from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.model_setup import head_table_dtype
from epochserve.worker.layers.context import LayerContext
from epochserve.worker.layers.ops import TORCH_OPS
from epochserve.worker.layers.parallel import SINGLE_DEVICE
from epochserve.worker.layers.vocab import LMHead
from epochserve.worker.layers.weight_source import TensorSource
from epochserve.worker.models.config import ModelConfig


@pytest.mark.parametrize(
    ("saved", "model_dtype", "head_mode", "expected"),
    [
        (torch.bfloat16, "bfloat16", "float32", torch.bfloat16),  # bf16 table: kept, exact in fp32
        (torch.float32, "bfloat16", "float32", torch.float32),  # fp32 table: bf16 would round it
        (torch.float32, "float32", "float32", torch.float32),
        (torch.float32, "bfloat16", "model", torch.bfloat16),  # the experiments-only bf16 head
    ],
)
def test_the_table_keeps_the_checkpoints_precision(tmp_path, saved, model_dtype, head_mode, expected):
    model_dir = build_tiny_model("llama", tmp_path / "m", save_dtype=saved)
    config = EngineConfig(model_dir=model_dir, dtype=model_dtype, lm_head_dtype=head_mode)
    assert head_table_dtype(config, ModelConfig.from_dir(model_dir), config.torch_dtype) == expected


def _head(dtype: torch.dtype, rows: int = 50, hidden: int = 24) -> LMHead:
    return LMHead(rows, hidden, LayerContext(tp=SINGLE_DEVICE, dtype=torch.bfloat16, ops=TORCH_OPS), dtype)


def test_a_bf16_table_gives_the_fp32_product_of_the_upcast_operands():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(50, 24, generator=gen).to(torch.bfloat16)
    hidden = torch.randn(5, 24, generator=gen).to(torch.bfloat16)
    head = _head(torch.bfloat16)
    head.load("weight", TensorSource(table), None, head.weight.data)
    logits = head(hidden)
    assert head.weight.dtype == torch.bfloat16 and logits.dtype == torch.float32
    exact = hidden.double() @ table.double().T  # bf16 products are exact: only fp32 sums round
    torch.testing.assert_close(logits.double(), exact, rtol=1e-6, atol=1e-6)
    assert not torch.equal(logits, (hidden @ table.T).float()), "a bf16 matmul would round the logits"


def test_a_table_the_stored_dtype_cannot_hold_is_refused_not_rounded():
    gen = torch.Generator().manual_seed(1)
    head = _head(torch.bfloat16)
    exact_in_bf16 = torch.randn(50, 24, generator=gen).to(torch.bfloat16).float()
    head.load("weight", TensorSource(exact_in_bf16), None, head.weight.data)  # fp32 file, bf16 values: fine
    assert torch.equal(head.weight.float(), exact_in_bf16)
    with pytest.raises(ValueError, match=r"with values torch\.bfloat16 cannot hold"):
        head.load("weight", TensorSource(torch.randn(50, 24, generator=gen)), None, head.weight.data)
