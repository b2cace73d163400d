"""The exact top-p / min-p boundary on CUDA: the engine's filter and the trainer's reference keep what
the rule keeps, on rows whose boundary lies 1e-9 ... 1e-5 from its threshold (Llama-3's vocabulary).

Run on a GPU machine: `python -P -m pytest -q tests/gpu/test_sampling_gpu.py` (skips without CUDA).
"""

from __future__ import annotations

import pytest
import torch
from fixtures.boundary_rows import min_p_row, top_p_row

from epochserve.sampling import SamplingParams
from epochserve.sampling.reference import rule_support_sizes
from epochserve.worker.engine.sampler import filter_logits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

VOCAB = 128_256


@pytest.mark.parametrize("batch_invariant", [False, True])
@pytest.mark.parametrize("kind", ["top_p", "min_p"])
@pytest.mark.parametrize("margin", [1e-9, 1e-8, 1e-7, 1e-6, 1e-5])
def test_the_engine_keeps_exactly_what_the_rule_keeps_on_cuda(kind, margin, batch_invariant):
    make = top_p_row if kind == "top_p" else min_p_row
    rows = [make(VOCAB, margin, keep, seed=s) for s, keep in enumerate((True, False))]
    logits = torch.stack([row.logits for row in rows] + [torch.randn(VOCAB) * 3 for _ in range(30)]).cuda()
    top_p = torch.ones(32, device="cuda")
    min_p = torch.zeros(32, device="cuda")
    threshold = top_p if kind == "top_p" else min_p
    threshold[:2] = torch.tensor([row.threshold for row in rows], device="cuda")
    filtered = filter_logits(logits, torch.zeros(32, dtype=torch.int64, device="cuda"), top_p, min_p,
                             batch_invariant)  # fmt: skip
    kept = torch.isfinite(filtered[:2]).sum(dim=-1).tolist()
    assert kept == [row.expected_support_size for row in rows]
    for row in rows:
        params = SamplingParams(**{kind: row.threshold})
        assert rule_support_sizes(row.logits[None].cuda(), params).tolist() == [row.expected_support_size]
