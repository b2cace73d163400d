"""The top-p / min-p / top-k boundary: the engine follows the exact rule, and a trainer rebuilds the
engine's support from its own logits (epochserve.sampling.reference), boundary positions included.

Rows are built with the boundary a known margin from its threshold (fixtures/boundary_rows.py) on a
128k vocabulary, where an fp32 prefix sum is off by ~1e-6 to 1e-5.
"""

import math

import pytest
import torch
from fixtures.boundary_rows import min_p_row, top_p_row

from epochserve.sampling import SamplingParams
from epochserve.sampling.reference import processed_logprobs, rule_support_sizes, token_logprobs
from epochserve.worker.engine.sampler import Sampler, filter_logits
from epochserve.worker.engine.sequence import Sequence

VOCAB = 131_072
MARGINS = [1e-9, 1e-8, 1e-7, 1e-6, 1e-5]
EPS32 = 2.0**-24  # float32's unit roundoff


def seq(params: SamplingParams, seed: int = 0) -> Sequence:
    return Sequence(
        seq_id=seed, request_id="r", sample_index=0, prompt_token_ids=[1], sampling=params,
        max_tokens=4, seed=seed, policy_version=0,
    )  # fmt: skip


def boundary_rows(kind: str, margin: float) -> list:
    make = top_p_row if kind == "top_p" else min_p_row
    return [make(VOCAB, margin, keep, seed=s) for s, keep in enumerate((True, False))]


def params_of(kind: str, threshold: float, **extra) -> SamplingParams:
    return SamplingParams(**{kind: threshold}, **extra)


def engine_support(rows: torch.Tensor, params: SamplingParams, batch_invariant: bool = False) -> list[int]:
    n = rows.shape[0]
    filtered = filter_logits(
        rows,
        torch.full((n,), params.top_k),
        torch.full((n,), params.top_p, dtype=torch.float32),
        torch.full((n,), params.min_p, dtype=torch.float32),
        batch_invariant,
    )
    return torch.isfinite(filtered).sum(dim=-1).tolist()


@pytest.mark.parametrize("kind", ["top_p", "min_p"])
@pytest.mark.parametrize("margin", MARGINS)
def test_the_engine_keeps_exactly_what_the_rule_keeps(kind, margin):
    for row in boundary_rows(kind, margin):
        params = params_of(kind, row.threshold)
        assert engine_support(row.logits[None], params) == [row.expected_support_size]
        # the same row among others, with the row-by-row prefix sums of batch_invariant mode too
        others = torch.randn(3, VOCAB) * 2
        batch = torch.cat([others[:2], row.logits[None], others[2:]])
        assert engine_support(batch, params)[2] == row.expected_support_size
        assert engine_support(batch, params, batch_invariant=True)[2] == row.expected_support_size


@pytest.mark.parametrize("kind", ["top_p", "min_p"])
@pytest.mark.parametrize("margin", MARGINS)
def test_the_trainer_reference_keeps_exactly_what_the_rule_keeps(kind, margin):
    for row in boundary_rows(kind, margin):
        params = params_of(kind, row.threshold)
        assert rule_support_sizes(row.logits[None], params).tolist() == [row.expected_support_size]


def test_top_k_ties_keep_the_lower_token_ids():
    logits = torch.full((1, 1000), -5.0)
    tied = [900, 17, 450, 3, 601]  # five tokens share the best logit
    logits[0, tied] = 2.0
    params = SamplingParams(top_k=3)
    filtered = filter_logits(logits, torch.tensor([3]), torch.tensor([1.0]), torch.tensor([0.0]))
    assert torch.isfinite(filtered[0]).nonzero()[:, 0].tolist() == [3, 17, 450]
    reference = processed_logprobs(logits, params)
    assert torch.isfinite(reference[0]).nonzero()[:, 0].tolist() == [3, 17, 450]


def test_thresholds_are_taken_at_their_float32_value():
    # A trainer passing top_p=0.9 (a float64) gets the support of the float32 0.9 the wire carried.
    row = top_p_row(VOCAB, 1e-9, keep_boundary=True, seed=3)
    assert rule_support_sizes(row.logits[None], SamplingParams(top_p=row.threshold + 1e-12)).tolist() == [
        row.expected_support_size
    ]


def test_the_sampler_reports_support_sizes_only_when_asked_and_whatever_shares_the_batch():
    row = top_p_row(VOCAB, 1e-9, keep_boundary=False, seed=4)
    asked = SamplingParams(top_p=row.threshold, return_support_size=True)
    sampler = Sampler()
    alone = sampler.sample(row.logits[None], [seq(asked, seed=9)])
    assert alone.support_sizes == [row.expected_support_size]
    batch = torch.cat([torch.randn(7, VOCAB), row.logits[None], torch.randn(8, VOCAB)])
    params = [SamplingParams(temperature=1.2, top_p=0.8, min_p=0.01)] * 7 + [asked] + [SamplingParams()] * 8
    inside = sampler.sample(batch, [seq(p, seed=9 if p is asked else i) for i, p in enumerate(params)])
    assert inside.support_sizes[7] == row.expected_support_size
    assert inside.token_ids[7] == alone.token_ids[0]
    assert inside.processed_logprobs[7] == alone.processed_logprobs[0]
    assert inside.support_sizes[:7] == [None] * 7 and inside.support_sizes[8:] == [None] * 8
    plain = sampler.sample(batch[8:], [seq(SamplingParams(), seed=1)] * 8)
    assert plain.support_sizes == [None] * 8


def trainer_logits(logits: torch.Tensor, seed: int) -> torch.Tensor:
    """The same logits as a trainer computes them: off by up to 2 float32 ulps in each entry."""
    generator = torch.Generator().manual_seed(seed)
    ulps = torch.randint(-2, 3, logits.shape, generator=generator).float()
    return (logits.double() * (1 + ulps * 2.0**-23)).float()


@pytest.mark.parametrize("kind", ["top_p", "min_p"])
def test_with_support_sizes_a_trainer_reproduces_the_engine_at_every_boundary(kind):
    rows = [row for margin in MARGINS for row in boundary_rows(kind, margin)]
    sampler = Sampler()
    num_flips = 0
    for index, row in enumerate(rows):
        params = params_of(kind, row.threshold, temperature=1.0, return_support_size=True)
        engine = sampler.sample(row.logits[None], [seq(params, seed=index)])
        token = torch.tensor(engine.token_ids)
        for trainer_seed in range(4):
            theirs = trainer_logits(row.logits[None], seed=100 * index + trainer_seed)
            # Error analysis: over one support, log-softmax moves by at most twice the largest logit
            # change (the token's own change plus logsumexp's); each side rounds its fp32 result (a
            # logprob near -11 here, a logsumexp over up to 128k terms) to a few ulps.
            dz = (theirs - row.logits[None]).abs().max().item()
            bound = 2 * dz + 16 * EPS32 * (1 + abs(engine.processed_logprobs[0]))
            exact = token_logprobs(theirs, token, params, torch.tensor(engine.support_sizes)).item()
            assert abs(exact - engine.processed_logprobs[0]) <= bound, (row.threshold, exact, engine)
            by_rule = rule_support_sizes(theirs, params).item()
            if by_rule != engine.support_sizes[0]:
                num_flips += 1  # the trainer's noise crossed the boundary: only support sizes tell
                assert abs(by_rule - engine.support_sizes[0]) == 1
            else:
                alone = token_logprobs(theirs, token, params).item()
                assert abs(alone - engine.processed_logprobs[0]) <= bound
    # A few ulps of noise in 128k logits moves the masses by ~1e-8: boundaries 1e-9 and 1e-8 from
    # their threshold flip for some of the trainer's seeds. Those are the cases support sizes exist for.
    assert num_flips >= 1


def test_support_sizes_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="support_sizes"):
        processed_logprobs(torch.randn(3, 10), SamplingParams(top_p=0.5), torch.tensor([2, 3]))


def test_greedy_reference_is_the_temperature_one_processing():
    logits = torch.randn(4, 300) * 3
    greedy = processed_logprobs(logits, SamplingParams(temperature=0.0, top_p=0.7))
    at_one = processed_logprobs(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.equal(greedy, at_one)
    assert math.isinf(greedy.min().item())  # top-p did cut
