"""The engine against Hugging Face transformers (fp32, same weights) on tiny Llama/Qwen2/Qwen3 models."""

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

KINDS = ["llama", "llama3", "qwen2", "qwen3"]
# Lengths that cross block boundaries (block size 4 here): 1, exact multiples, one over, one under.
PROMPT_LENGTHS = [1, 3, 4, 5, 8, 9, 15, 17, 30]


def prompts(vocab_size, lengths=PROMPT_LENGTHS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in lengths]


@pytest.fixture(scope="module", params=KINDS)
def tiny(request, tiny_model_dirs):
    model_dir = tiny_model_dirs[request.param]
    return model_dir, make_engine(model_dir, block_size=4, num_kv_blocks=256), hf_model(model_dir)


def test_greedy_is_token_identical_to_hf_generate(tiny):
    _, engine, reference = tiny
    batch = prompts(engine.model_config.vocab_size)
    requests = [
        make_request(f"g{i}", p, engine.limits, temperature=0.0, max_tokens=12, ignore_eos=True)
        for i, p in enumerate(batch)
    ]
    results = run_to_completion(engine, requests)  # all prompts in one continuous batch
    for i, prompt in enumerate(batch):
        assert results[f"g{i}"][0].token_ids == hf_greedy(reference, prompt, 12), (
            f"prompt {i} (len {len(prompt)})"
        )


SAMPLING_CASES = [
    dict(temperature=t, top_k=k, top_p=p, min_p=m)
    for t in (0.7, 1.0, 1.3)
    for (k, p, m) in ((0, 1.0, 0.0), (20, 1.0, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.05), (40, 0.8, 0.02))
]


def test_sampled_logprobs_match_hf_processing(tiny):
    _, engine, reference = tiny
    batch = prompts(engine.model_config.vocab_size, [3, 9, 17], seed=1)
    requests = [
        make_request(
            f"s{c}-{i}",
            p,
            engine.limits,
            max_tokens=8,
            seed=100 + c,
            ignore_eos=True,
            return_raw_logprobs=True,
            **case,
        )
        for c, case in enumerate(SAMPLING_CASES)
        for i, p in enumerate(batch)
    ]
    results = run_to_completion(engine, requests)
    for c, case in enumerate(SAMPLING_CASES):
        for i, prompt in enumerate(batch):
            sample = results[f"s{c}-{i}"][0]
            logits = hf_next_token_logits(reference, prompt, sample.token_ids)
            processed = hf_processed_logprobs(logits, **case)
            raw = torch.log_softmax(logits, dim=-1)
            for pos, token in enumerate(sample.token_ids):
                expected = processed[pos, token].item()
                assert math.isfinite(expected), f"case {case}: token {token} outside the processed support"
                assert sample.logprobs[pos] == pytest.approx(expected, abs=1e-4), (case, pos)
                assert sample.raw_logprobs[pos] == pytest.approx(raw[pos, token].item(), abs=1e-4), (
                    case,
                    pos,
                )
