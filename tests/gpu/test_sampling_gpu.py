"""The exact top-p / min-p boundary on CUDA: the engine's filter, its fused sort-free kernels and the
trainer's reference keep what the rule keeps, on rows whose boundary lies 1e-9 ... 1e-5 from its
threshold (Llama-3's vocabulary); the fused kernels draw as the sorted path does, at batch 1/64/256.

Run on a GPU machine: `python -P -m pytest -q tests/gpu/test_sampling_gpu.py` (skips without CUDA).
"""

from __future__ import annotations

import pytest
import torch
from fixtures.boundary_rows import min_p_row, top_p_row

from epochserve.kernels.sampling import SampleRows
from epochserve.kernels.sampling_triton import noise_triton, sample_rows_triton
from epochserve.sampling import SamplingParams
from epochserve.sampling.reference import rule_support_sizes
from epochserve.worker.engine.sampler import Sampler, filter_logits, sample_rows_of
from epochserve.worker.engine.sampling_noise import gumbel_noise, uniform_bits
from epochserve.worker.engine.sequence import Sequence
from epochserve.worker.layers.ops import TritonOps

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

VOCAB = 128_256
MARGINS = [1e-9, 1e-8, 1e-7, 1e-6, 1e-5]


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


# The fused sort-free kernels (kernels/sampling_triton.py) against the sorted path they replace.


class SortedTritonOps(TritonOps):
    """The GPU path before the fused kernels: Triton everywhere but sampling, which sorts."""

    __slots__ = ()

    def sample_rows(self, *args, **kwargs):
        return None


MIX = [
    SamplingParams(),
    SamplingParams(top_p=0.95),
    SamplingParams(temperature=0.7, top_k=50, top_p=0.9),
    SamplingParams(temperature=1.2, min_p=0.05),
    SamplingParams(temperature=0.0, top_p=0.8),
    SamplingParams(top_k=1000, top_p=0.99, min_p=0.001),
    SamplingParams(temperature=0.9, top_k=20),
]


def _seqs(params: list[SamplingParams]) -> list[Sequence]:
    return [
        Sequence(seq_id=i, request_id=str(i), sample_index=0, prompt_token_ids=[1], sampling=p, max_tokens=8,
                 seed=1000 + i, policy_version=0)
        for i, p in enumerate(params)
    ]  # fmt: skip


def _sorted_scores(logits: torch.Tensor, seqs: list[Sequence], row: int) -> torch.Tensor:
    """The sorted path's noisy scores of one row: (processed logprob) + noise."""
    p = seqs[row].sampling
    z = logits[row : row + 1] / (1.0 if p.is_greedy else p.temperature)
    kept = filter_logits(z, torch.tensor([p.top_k], device="cuda"), torch.tensor([p.top_p], device="cuda"),
                         torch.tensor([p.min_p], device="cuda"))  # fmt: skip
    keys = torch.tensor(sample_rows_of(seqs).noise_keys[row : row + 1], device="cuda")
    return (kept - torch.logsumexp(kept, dim=-1, keepdim=True) + gumbel_noise(keys, VOCAB))[0]


def test_fused_noise_is_the_torch_noise_bit_for_bit_on_cuda():
    keys = torch.tensor([0, 1, 12345, 2**62 + 7, 2**63 - 1, 987654321987654321], device="cuda")
    bits, gumbel = noise_triton(keys, VOCAB)
    assert torch.equal(bits.long(), uniform_bits(keys, VOCAB))
    assert torch.equal(gumbel, gumbel_noise(keys, VOCAB))  # libdevice's logf on both sides


@pytest.mark.parametrize("batch", [1, 64, 256])
def test_fused_sampling_matches_the_sorted_path_on_cuda(batch):
    """Same support sizes; same tokens but where two kept tokens' noisy scores tie to fp32 rounding
    (the two paths' logsumexps differ in their last bits); logprobs within that rounding."""
    gen = torch.Generator(device="cuda").manual_seed(batch)
    logits = torch.randn(batch, VOCAB, device="cuda", generator=gen) * 3
    logits[1::5] = torch.round(logits[1::5] * 2) / 2  # rows of exact ties at every boundary
    params = [SamplingParams(**_fields(MIX[i % len(MIX)]), return_support_size=True) for i in range(batch)]
    seqs = _seqs(params)
    fused = Sampler(ops=TritonOps()).sample(logits, seqs)
    sorted_path = Sampler(ops=SortedTritonOps()).sample(logits, seqs)
    assert fused.support_sizes == sorted_path.support_sizes
    differ = [i for i in range(batch) if fused.token_ids[i] != sorted_path.token_ids[i]]
    for i in differ:
        scores = _sorted_scores(logits, seqs, i)
        a, b = scores[fused.token_ids[i]].item(), scores[sorted_path.token_ids[i]].item()
        assert abs(a - b) <= 4e-6 * max(1.0, abs(b)), (i, a, b)
    assert len(differ) <= max(1, batch // 100)
    same = [i for i in range(batch) if i not in differ]
    ours = torch.tensor([fused.processed_logprobs[i] for i in same])
    theirs = torch.tensor([sorted_path.processed_logprobs[i] for i in same])
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=2e-5)


def _fields(p: SamplingParams) -> dict:
    return {name: getattr(p, name) for name in ("temperature", "top_p", "top_k", "min_p")}


@pytest.mark.parametrize("kind", ["top_p", "min_p"])
def test_fused_sampling_keeps_exactly_what_the_rule_keeps_on_cuda(kind):
    make = top_p_row if kind == "top_p" else min_p_row
    rows = [make(VOCAB, margin, keep, seed=s) for s, margin in enumerate(MARGINS) for keep in (True, False)]
    others = [torch.randn(VOCAB) * 3 for _ in range(22)]
    logits = torch.stack([row.logits for row in rows] + others).cuda()
    params = [SamplingParams(**{kind: row.threshold}) for row in rows] + [SamplingParams(top_p=0.9)] * 22
    greedy, raw_lse, _ = TritonOps().softmax_stats(logits)
    sampled = sample_rows_triton(logits, greedy, raw_lse, sample_rows_of(_seqs(params)))
    assert sampled.support_sizes[: len(rows)].tolist() == [row.expected_support_size for row in rows]


def test_fused_sampling_is_batch_invariant_in_bytes_on_cuda():
    gen = torch.Generator(device="cuda").manual_seed(5)
    logits = torch.randn(64, VOCAB, device="cuda", generator=gen) * 3
    seqs = _seqs([MIX[i % len(MIX)] for i in range(64)])
    rows = sample_rows_of(seqs)
    greedy, raw_lse, _ = TritonOps().softmax_stats(logits)
    batch = sample_rows_triton(logits, greedy, raw_lse, rows)
    for i in (0, 1, 2, 5, 63):
        one = SampleRows(*(values[i : i + 1] for values in _columns(rows)))
        alone = sample_rows_triton(logits[i : i + 1], greedy[i : i + 1], raw_lse[i : i + 1], one)
        for a, b in zip(alone, batch, strict=True):
            assert torch.equal(a, b[i : i + 1]), i


def _columns(rows: SampleRows) -> tuple[list, ...]:
    return (rows.temperatures, rows.top_ks, rows.top_ps, rows.min_ps, rows.noise_keys, rows.greedy)
