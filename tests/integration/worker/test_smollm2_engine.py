"""The engine on the real SmolLM2-135M-Instruct against transformers (fp32 on CPU)."""

import math

import pytest
import torch
from fixtures.engine import (
    hf_greedy,
    hf_model,
    hf_next_token_logits,
    hf_processed_logprobs,
    make_engine,
    make_request,
    run_to_completion,
)

TEXTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, there lived a",
    "List three colors:",
]
# Random-id prompts whose lengths cross the 16-token block boundaries.
RANDOM_LENGTHS = [1, 15, 16, 17, 33, 48, 70]


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    generator = torch.Generator().manual_seed(0)
    prompts = [tokenizer.encode(t) for t in TEXTS]
    prompts += [torch.randint(100, 40000, (n,), generator=generator).tolist() for n in RANDOM_LENGTHS]
    return make_engine(smollm2_dir, block_size=16), hf_model(smollm2_dir), prompts


def test_greedy_is_token_identical_to_hf_generate(smol):
    engine, reference, prompts = smol
    assert len(prompts) >= 8
    requests = [
        make_request(f"g{i}", p, engine.limits, temperature=0.0, max_tokens=24, ignore_eos=True)
        for i, p in enumerate(prompts)
    ]
    results = run_to_completion(engine, requests)
    for i, prompt in enumerate(prompts):
        assert results[f"g{i}"][0].token_ids == hf_greedy(reference, prompt, 24), (
            f"prompt {i} (len {len(prompt)})"
        )


CASES = [
    dict(temperature=0.7, top_k=50),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.3, min_p=0.05),
    dict(temperature=1.0, top_k=40, top_p=0.95, min_p=0.02),
]


def test_sampled_processed_and_raw_logprobs_match_hf(smol):
    engine, reference, prompts = smol
    requests = [
        make_request(
            f"s{c}-{i}",
            p,
            engine.limits,
            seed=c * 10 + i,
            max_tokens=12,
            ignore_eos=True,
            return_raw_logprobs=True,
            **case,
        )
        for c, case in enumerate(CASES)
        for i, p in enumerate(prompts[:3])
    ]
    results = run_to_completion(engine, requests)
    for c, case in enumerate(CASES):
        for i, prompt in enumerate(prompts[:3]):
            sample = results[f"s{c}-{i}"][0]
            logits = hf_next_token_logits(reference, prompt, sample.token_ids)
            processed = hf_processed_logprobs(logits, **case)
            raw = torch.log_softmax(logits, dim=-1)
            for pos, token in enumerate(sample.token_ids):
                assert math.isfinite(processed[pos, token]), (case, pos, "outside the processed support")
                assert sample.logprobs[pos] == pytest.approx(processed[pos, token].item(), abs=1e-4), (
                    case,
                    pos,
                )
                assert sample.raw_logprobs[pos] == pytest.approx(raw[pos, token].item(), abs=1e-4), (
                    case,
                    pos,
                )


def _alone_and_inside_a_batch_of_16(engine):
    """The same seeded request run alone, then as the first of 16 requests of other lengths."""
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(100, 40000, (21,), generator=generator).tolist()
    others = [
        torch.randint(100, 40000, (n,), generator=generator).tolist()
        for n in (3, 9, 17, 25, 40, 60, 5, 33, 12, 1, 44, 29, 16, 7, 64)
    ]

    def target_request():
        return make_request(
            "t", target, engine.limits, temperature=1.0, top_p=0.95, seed=1234, max_tokens=20, ignore_eos=True
        )

    alone = run_to_completion(engine, [target_request()])["t"][0]
    batch = [target_request()] + [
        make_request(f"o{i}", p, engine.limits, seed=i, temperature=0.8, max_tokens=10 + i, ignore_eos=True)
        for i, p in enumerate(others)
    ]
    assert len(batch) == 16
    together = run_to_completion(engine, batch)["t"][0]
    return target, alone, together


def test_a_request_is_bit_identical_alone_and_inside_a_batch_of_16_when_batch_invariant(smollm2_dir):
    # Prefix cache off: a cached prefix would change how the prompt is computed, not what it means.
    engine = make_engine(smollm2_dir, block_size=16, enable_prefix_cache=False, batch_invariant=True)
    assert engine.kernel_mode == "batch_invariant"
    _, alone, together = _alone_and_inside_a_batch_of_16(engine)
    assert together.token_ids == alone.token_ids
    assert together.logprobs == alone.logprobs  # exactly: the same float operations on the same values


# By default only the products differ between a request alone and inside a batch: MKL picks its sgemm
# kernel by the number of rows, so each product's K-term sums run in another order (the test above
# shows that everything else is already row-invariant). Error analysis, fp32 (u = 2^-24):
# - two orders of a K-term dot product differ by ~sqrt(K)·u relative to its terms (rounding errors
#   of either sign add like a random walk): at most sqrt(1536)·u = 2.3e-6 here (measured: 2.0e-6);
# - after the 30 layers the final hidden state differs by the same relative size (measured: 1.4e-6),
#   so a logit z moves by ~sqrt(K)·u·max|z| (measured 5.9e-5 at max|z| = 34.5; predicted 8.0e-5);
# - a logprob, z_t - logsumexp(z), moves by at most twice the largest logit move.
# Bound: 2·sqrt(K)·u·max|z| with K the longest product (the MLP's down projection) and max|z| from
# the reference logits of these positions (1.6e-4 here). Over ten batch compositions (1 to 47 other
# requests, 200 positions) the largest |Δ| measured was 2.7e-5, a sixth of it. Tokens compare exactly:
# one could change only where two candidates' noisy scores tie within ~1e-4, which these seeds do not.
def test_a_request_alone_and_inside_a_batch_of_16_agree_to_fp32_rounding_by_default(smol, smollm2_dir):
    _, reference, _ = smol
    engine = make_engine(smollm2_dir, block_size=16, enable_prefix_cache=False)
    target, alone, together = _alone_and_inside_a_batch_of_16(engine)
    assert together.token_ids == alone.token_ids
    max_logit = hf_next_token_logits(reference, target, alone.token_ids).abs().max().item()
    longest_sum = engine.model_config.intermediate_size
    unit_roundoff = torch.finfo(torch.float32).eps / 2
    bound = 2 * math.sqrt(longest_sum) * unit_roundoff * max_logit
    assert together.logprobs == pytest.approx(alone.logprobs, abs=bound, rel=0)
