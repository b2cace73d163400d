"""Sampler: processing matches Hugging Face's warpers; the exponential race samples p; guards."""

import math

import pytest
import torch
from fixtures.engine import hf_processed

from epochserve.sampling import SamplingParams
from epochserve.worker.engine.sampler import Sampler, filter_logits
from epochserve.worker.engine.sequence import Sequence


def seq(params, seed=0, sample_index=0):
    return Sequence(
        seq_id=sample_index,
        request_id="r",
        sample_index=sample_index,
        prompt_token_ids=[1],
        sampling=params,
        max_tokens=4,
        seed=seed,
        policy_version=0,
    )


CASES = [
    dict(temperature=0.7, top_k=20),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.3, min_p=0.05),
    dict(temperature=0.7, top_k=50, top_p=0.8, min_p=0.02),
    dict(temperature=1.3, top_k=5),
    dict(temperature=1.0),
]


@pytest.mark.parametrize("case", CASES)
def test_processing_matches_hf_warpers(case):
    torch.manual_seed(0)
    logits = torch.randn(4, 1000) * 3
    params = SamplingParams(**case)
    ours = filter_logits(
        logits / params.temperature,
        torch.full((4,), params.top_k),
        torch.full((4,), params.top_p),
        torch.full((4,), params.min_p),
    )
    theirs = hf_processed(logits, **case)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    ours_lp, theirs_lp = torch.log_softmax(ours, -1), torch.log_softmax(theirs, -1)
    finite = torch.isfinite(theirs_lp)
    assert torch.allclose(ours_lp[finite], theirs_lp[finite], atol=1e-6)


def test_processed_logprob_is_of_the_processed_distribution_and_raw_of_the_raw_one():
    torch.manual_seed(1)
    logits = torch.randn(3, 200) * 2
    params = SamplingParams(temperature=0.7, top_p=0.9, return_raw_logprobs=True, num_top_logprobs=3)
    seqs = [seq(params, seed=s) for s in range(3)]
    out = Sampler().sample(logits, seqs)
    expected = torch.log_softmax(hf_processed(logits, temperature=0.7, top_p=0.9), -1)
    raw = torch.log_softmax(logits, -1)
    for row, token in enumerate(out.token_ids):
        assert math.isfinite(expected[row, token])  # inside the processed support
        assert out.processed_logprobs[row] == pytest.approx(expected[row, token].item(), abs=1e-6)
        assert out.raw_logprobs[row] == pytest.approx(raw[row, token].item(), abs=1e-6)
        top_ids, top_values = out.top_logprobs[row]
        assert list(top_ids) == expected[row].topk(3).indices.tolist()
        assert top_values[0] >= top_values[1] >= top_values[2]


def test_greedy_takes_the_argmax_and_reports_temperature_one_logprobs():
    torch.manual_seed(2)
    logits = torch.randn(2, 50)
    out = Sampler().sample(logits, [seq(SamplingParams(temperature=0.0)) for _ in range(2)])
    assert out.token_ids == logits.argmax(-1).tolist()
    expected = torch.log_softmax(logits, -1).max(-1).values.tolist()
    assert out.processed_logprobs == pytest.approx(expected, abs=1e-6)


def test_exponential_race_draws_tokens_with_their_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(1, 4)
    sampler = Sampler()
    counts = torch.zeros(4)
    num_draws = 4000
    for draw in range(num_draws):
        s = seq(SamplingParams(), seed=draw)
        counts[sampler.sample(logits, [s]).token_ids[0]] += 1
    # Fixed seeds make this deterministic; 4 standard errors still leaves room for any seed set.
    stderr = (probs * (1 - probs) / num_draws).sqrt()
    assert ((counts / num_draws - probs).abs() < 4 * stderr).all(), counts / num_draws


def test_noise_depends_on_seed_sample_and_position_only():
    torch.manual_seed(3)
    logits = torch.randn(1, 5000)
    sampler = Sampler()
    a = sampler.sample(logits, [seq(SamplingParams(), seed=11)]).token_ids
    b = sampler.sample(
        torch.cat([torch.randn(2, 5000), logits]), [seq(SamplingParams(), seed=s) for s in (1, 2, 11)]
    )
    assert a[0] == b.token_ids[2]  # same token whatever shares the batch
    draws = {sampler.sample(logits, [seq(SamplingParams(), seed=s)]).token_ids[0] for s in range(20)}
    assert len(draws) > 10  # different seeds draw different tokens
    siblings = {
        sampler.sample(logits, [seq(SamplingParams(), seed=11, sample_index=i)]).token_ids[0]
        for i in range(20)
    }
    assert len(siblings) > 10  # the n samples of one request are independent


def test_non_finite_logits_fail_only_their_row():
    logits = torch.randn(3, 10)
    logits[1, 4] = float("nan")
    out = Sampler().sample(logits, [seq(SamplingParams(temperature=0.0)) for _ in range(3)])
    assert out.errors[0] is None and out.errors[2] is None
    assert out.errors[1] == "non-finite logits"


def test_row_by_row_prefix_sums_give_the_same_filter():
    torch.manual_seed(5)
    logits = torch.randn(5, 300) * 2
    args = (torch.full((5,), 40), torch.full((5,), 0.8), torch.full((5,), 0.01))
    assert torch.equal(filter_logits(logits, *args), filter_logits(logits, *args, batch_invariant=True))


def test_the_sort_free_reference_draws_as_the_sorted_path():
    """kernels/sampling.py (the algorithm of the GPU's fused kernels, in PyTorch): a threshold search
    instead of a sort keeps the same support, ties at the boundary included, and draws the same tokens."""
    from epochserve.kernels.sampling import sample_rows_torch
    from epochserve.worker.engine.sampler import sample_rows_of

    torch.manual_seed(6)
    logits = torch.randn(8, 600) * 2
    logits[4:] = torch.round(logits[4:] * 2) / 2  # many exact ties at every boundary
    cases = [dict(top_k=7), dict(top_p=0.8), dict(temperature=0.6, min_p=0.05), dict(top_k=40, top_p=0.9)]
    params = [SamplingParams(**cases[i % 4], return_support_size=True) for i in range(8)]
    seqs = [seq(p, seed=i, sample_index=i) for i, p in enumerate(params)]
    sorted_path = Sampler().sample(logits, seqs)
    greedy, raw_lse = logits.argmax(dim=-1), torch.logsumexp(logits, dim=-1)
    sort_free = sample_rows_torch(logits, greedy, raw_lse, sample_rows_of(seqs))
    assert sort_free.support_sizes.tolist() == sorted_path.support_sizes
    assert sort_free.token_ids.tolist() == sorted_path.token_ids
    assert sort_free.logprobs.tolist() == pytest.approx(sorted_path.processed_logprobs, abs=2e-6)
    assert Sampler().ops.sample_rows(logits, greedy, raw_lse, sample_rows_of(seqs)) is None  # CPU: sorted
