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


def test_a_request_is_the_same_alone_and_inside_a_batch_of_16(smollm2_dir):
    # Prefix cache off: a cached prefix would change how the prompt is computed, not what it means.
    engine = make_engine(smollm2_dir, block_size=16, enable_prefix_cache=False)
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
    assert together.token_ids == alone.token_ids
    assert together.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
