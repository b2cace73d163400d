"""The fused sort-free sampling kernels (kernels/sampling_triton.py) through the interpreter, against
the Sampler's sorted PyTorch path (filter_logits + counter-based Gumbel noise) and against their own
sort-free PyTorch reference (kernels/sampling.py).

What must be equal: the noise bits; support sizes (the kept prefix, boundary ties included); the
drawn tokens (they could differ only where two kept tokens' noisy scores tie to fp32 rounding, never
met on these rows). Processed logprobs agree to fp32 rounding of the logsumexp (the kernels' lse is
fp32(zmax + log(fp64 mass)), the sorted path's an fp32 logsumexp). The interpreter runs small rows in
1,024-logit chunks (the GPU uses 4,096) so that every row spans several chunks and a partial block.
"""

from __future__ import annotations

import math

import pytest
import torch
from fixtures.boundary_rows import BoundaryRow, min_p_row

from epochserve.kernels.sampling import order_keys, sample_rows_torch
from epochserve.kernels.sampling_triton import noise_triton, sample_rows_triton
from epochserve.sampling import SamplingParams
from epochserve.sampling.reference import as_float32
from epochserve.worker.engine.sampler import Sampler, sample_rows_of
from epochserve.worker.engine.sampling_noise import gumbel_noise, uniform_bits
from epochserve.worker.engine.sequence import Sequence
from epochserve.worker.layers.ops import TORCH_OPS, TritonOps

VOCAB = 2_500  # 3 chunks of 1,024, the last one partial; not a multiple of the 512-logit block
CHUNK, BLOCK = 1024, 512  # the interpreter's cost follows the number of blocks
MARGINS = [1e-9, 1e-8, 1e-7, 1e-6, 1e-5]


def seq(params: SamplingParams, seed: int, position: int = 0) -> Sequence:
    s = Sequence(
        seq_id=seed, request_id=str(seed), sample_index=0, prompt_token_ids=[1], sampling=params,
        max_tokens=4, seed=seed, policy_version=0,
    )  # fmt: skip
    s.output_token_ids.extend([0] * position)
    return s


def fused(logits: torch.Tensor, seqs: list[Sequence]):
    greedy, raw_lse, _ = TORCH_OPS.softmax_stats(logits)
    return sample_rows_triton(logits, greedy, raw_lse, sample_rows_of(seqs), chunk=CHUNK, block=BLOCK)


def reference(logits: torch.Tensor, seqs: list[Sequence]):
    greedy, raw_lse, _ = TORCH_OPS.softmax_stats(logits)
    return sample_rows_torch(logits, greedy, raw_lse, sample_rows_of(seqs))


def check_against_sorted_path(logits: torch.Tensor, params: list[SamplingParams]) -> None:
    params = [SamplingParams(**_fields(p), return_support_size=True) for p in params]
    seqs = [seq(p, seed=100 + i, position=i) for i, p in enumerate(params)]
    sorted_path = Sampler(ops=TORCH_OPS).sample(logits, seqs)
    ours = fused(logits, seqs)
    assert ours.support_sizes.tolist() == sorted_path.support_sizes
    assert ours.token_ids.tolist() == sorted_path.token_ids
    torch.testing.assert_close(ours.logprobs, torch.tensor(sorted_path.processed_logprobs).float(),
                               rtol=1e-6, atol=2e-6)  # fmt: skip
    theirs = reference(logits, seqs)  # the same algorithm in PyTorch: the same prefix, the same draw
    assert torch.equal(ours.support_sizes, theirs.support_sizes)
    assert torch.equal(ours.token_ids, theirs.token_ids)
    torch.testing.assert_close(ours.logprobs, theirs.logprobs, rtol=1e-6, atol=1e-6)


def _fields(p: SamplingParams) -> dict:
    return {name: getattr(p, name) for name in ("temperature", "top_p", "top_k", "min_p")}


def test_noise_bits_are_sampling_noise_bits():
    keys = torch.tensor([0, 1, 12345, 2**62 + 7, 2**63 - 1, 987654321987654321])
    bits, gumbel = noise_triton(keys, 3000)
    assert torch.equal(bits.long(), uniform_bits(keys, 3000))
    # -log(-log(u)) of the same u: NumPy's fp32 log here, torch's in the reference (CUDA: the same
    # libdevice logf, tests/gpu checks bit equality).
    torch.testing.assert_close(gumbel, gumbel_noise(keys, 3000), rtol=2e-7, atol=1e-6)


SCENARIOS = {
    "temperature_only": [SamplingParams(temperature=t) for t in (1.0, 0.7, 1.3, 0.25, 2.0)],
    "top_k": [SamplingParams(top_k=k) for k in (1, 2, 7, 50, 999, VOCAB - 1, VOCAB + 5)],
    "top_p": [SamplingParams(top_p=p) for p in (0.05, 0.3, 0.5, 0.9, 0.95, 0.999)],
    "min_p": [SamplingParams(min_p=m) for m in (1e-6, 0.001, 0.05, 0.3, 0.9, 1.0)],
    "combined": [
        SamplingParams(temperature=0.7, top_k=50, top_p=0.8, min_p=0.02),
        SamplingParams(temperature=1.3, top_k=200, top_p=0.95),
        SamplingParams(temperature=0.9, top_p=0.7, min_p=0.1),
        SamplingParams(top_k=20, min_p=0.05),
        SamplingParams(temperature=1.1, top_k=5, top_p=0.99, min_p=0.0001),
        SamplingParams(),
    ],
    "greedy_mixed_in": [
        SamplingParams(temperature=0.0),
        SamplingParams(top_p=0.9),
        SamplingParams(temperature=0.0, top_k=10, top_p=0.5),
        SamplingParams(temperature=0.8, top_k=40),
        SamplingParams(temperature=0.0, min_p=0.2),
    ],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_random_rows_match_the_sorted_path(scenario):
    params = SCENARIOS[scenario]
    gen = torch.Generator().manual_seed(len(scenario))
    logits = torch.randn(len(params), VOCAB, generator=gen) * 3
    check_against_sorted_path(logits, params)


def test_rows_of_exact_ties_match_the_sorted_path():
    """Logits on a coarse grid: every boundary falls inside a large group of equal values, which the
    kernels split by token id across chunks (partial ties)."""
    gen = torch.Generator().manual_seed(7)
    logits = torch.round(torch.randn(8, VOCAB, generator=gen) * 2) / 2
    logits[6] = 1.5  # one value everywhere
    logits[7, ::3] = logits[7].max()  # a third of the row tied at the top
    params = [
        SamplingParams(top_k=300),
        SamplingParams(top_p=0.6),
        SamplingParams(top_k=900, top_p=0.9),
        SamplingParams(temperature=0.7, top_p=0.35, min_p=0.01),
        SamplingParams(top_k=1),
        SamplingParams(top_p=0.999, min_p=0.5),
        SamplingParams(top_k=1000, top_p=0.3),
        SamplingParams(top_k=500, top_p=0.5),
    ]
    check_against_sorted_path(logits, params)


def test_tied_tokens_are_kept_by_lower_id_in_any_chunk():
    logits = torch.full((1, VOCAB), -5.0).repeat(16, 1)
    tied = [2400, 17, 1500, 3, 1030, 601]  # six tokens share the best logit, across the three chunks
    logits[:, tied] = 2.0
    seqs = [seq(SamplingParams(top_k=4), seed=s) for s in range(16)]
    ours = fused(logits, seqs)
    assert ours.support_sizes.tolist() == [4] * 16
    assert set(ours.token_ids.tolist()) == {3, 17, 601, 1030}  # the four lowest ids, each drawn


def small_top_p_row(margin: float, keep_boundary: bool, seed: int) -> BoundaryRow:
    """fixtures.boundary_rows.top_p_row on a small vocabulary: 1,500 head tokens, the mass before the
    boundary token exactly threshold -/+ margin (two tail tokens absorb the difference)."""
    generator = torch.Generator().manual_seed(seed)
    num_head = 1500
    head = 8.0 + 0.05 * torch.randn(num_head, generator=generator)
    tail = 4.0 + 0.5 * torch.randn(VOCAB - num_head, generator=generator)
    values = torch.cat([head, tail]).float().sort(descending=True).values.tolist()
    boundary = 1200

    def masses() -> tuple[list[float], float]:
        weights = [math.exp(z - values[0]) for z in values]
        return weights, math.fsum(weights)

    weights, total = masses()
    before = math.fsum(weights[:boundary])
    sign = 1.0 if keep_boundary else -1.0
    threshold = as_float32(before / total + sign * margin)
    target = threshold - sign * margin
    for tail_rank in (len(values) - 1, len(values) - 2):
        weights, total = masses()
        wanted = weights[tail_rank] + before / target - total
        values[tail_rank] = float(torch.tensor(values[0] + math.log(wanted), dtype=torch.float32))
    weights, total = masses()
    assert abs(before / total - target) < 1e-12
    row = torch.tensor(values)[torch.randperm(len(values), generator=generator)]
    return BoundaryRow(row, threshold, boundary + 1 if keep_boundary else boundary)


@pytest.mark.parametrize("kind", ["top_p", "min_p"])
def test_boundaries_within_1e9_of_their_threshold_are_exact(kind):
    make = small_top_p_row if kind == "top_p" else (lambda m, k, s: min_p_row(VOCAB, m, k, seed=s))
    rows = [make(margin, keep, i) for i, margin in enumerate(MARGINS) for keep in (True, False)]
    seqs = [seq(SamplingParams(**{kind: row.threshold}), seed=i) for i, row in enumerate(rows)]
    ours = fused(torch.stack([row.logits for row in rows]), seqs)
    assert ours.support_sizes.tolist() == [row.expected_support_size for row in rows]


def test_rows_are_batch_invariant_to_the_bit():
    """One program per chunk, chunks fixed by the vocabulary, reductions in a fixed order: a row's
    results do not depend on the rows beside it (nor on how many search passes they need)."""
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn(5, VOCAB, generator=gen) * 3
    params = [
        SamplingParams(top_p=0.9),
        SamplingParams(),
        SamplingParams(temperature=0.6, top_k=30, top_p=0.8),
        SamplingParams(temperature=0.0),
        SamplingParams(min_p=0.02),
    ]
    seqs = [seq(p, seed=i) for i, p in enumerate(params)]
    batch = fused(logits, seqs)
    for i in (0, 4):
        alone = fused(logits[i : i + 1], seqs[i : i + 1])
        for a, b in zip(alone, batch, strict=True):
            assert torch.equal(a, b[i : i + 1])


def test_unprocessed_rows_report_logit_minus_raw_logsumexp():
    gen = torch.Generator().manual_seed(12)
    logits = torch.randn(3, VOCAB, generator=gen)
    seqs = [seq(SamplingParams(temperature=t), seed=i) for i, t in enumerate((1.0, 0.0, 1.0))]
    ours = fused(logits, seqs)
    raw_lse = torch.logsumexp(logits, dim=-1)
    assert torch.equal(ours.logprobs, logits.gather(1, ours.token_ids[:, None])[:, 0] - raw_lse)
    assert ours.token_ids[1] == logits[1].argmax() and ours.support_sizes.tolist() == [VOCAB] * 3


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # NumPy's max over the NaN row, in the interpreter
def test_a_non_finite_row_spoils_only_itself():
    gen = torch.Generator().manual_seed(13)
    logits = torch.randn(3, VOCAB, generator=gen)
    seqs = [seq(SamplingParams(top_p=0.9), seed=i) for i in range(3)]
    clean = fused(logits, seqs)
    logits[1, 77] = float("nan")
    spoiled = fused(logits, seqs)
    for a, b in zip(spoiled, clean, strict=True):
        assert torch.equal(a[[0, 2]], b[[0, 2]])


def test_the_sampler_takes_the_fused_path_with_triton_ops():
    """Sampler(ops=TritonOps()) on CPU tensors runs the kernels (default 4,096-logit chunks) and gives
    the sorted path's tokens, support sizes and raw logprobs; a batch asking for top logprobs runs the
    sorted path."""
    gen = torch.Generator().manual_seed(14)
    logits = torch.randn(3, 5000, generator=gen) * 2
    params = [SamplingParams(top_p=0.9, return_support_size=True, return_raw_logprobs=True),
              SamplingParams(temperature=0.0, return_support_size=True),
              SamplingParams(temperature=1.2, top_k=20, return_support_size=True)]  # fmt: skip
    seqs = [seq(p, seed=i) for i, p in enumerate(params)]
    ours = Sampler(ops=TritonOps()).sample(logits, seqs)
    theirs = Sampler(ops=TORCH_OPS).sample(logits, seqs)
    assert ours.token_ids == theirs.token_ids
    assert ours.support_sizes == theirs.support_sizes
    assert ours.raw_logprobs == pytest.approx(theirs.raw_logprobs, abs=2e-6)
    assert ours.processed_logprobs == pytest.approx(theirs.processed_logprobs, abs=2e-6)
    asks_top = [seq(SamplingParams(num_top_logprobs=2), seed=0), *seqs[1:]]
    assert Sampler(ops=TritonOps()).sample(logits, asks_top).top_logprobs[0] is not None


def test_order_keys_order_fp32_values():
    values = torch.tensor([-math.inf, -3e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, 3e38, math.inf])
    keys = order_keys(values)
    assert (keys[1:] >= keys[:-1]).all() and keys[4] == keys[5] == 0
    assert len(set(keys.tolist())) == len(values) - 1
