"""return_prompt_logprobs (scoring): the processed logprob of every prompt token after the first,
against transformers' logits under the trainer's reference processing (fp32 CPU, tiny models)."""

import math

import pytest
import torch
from fixtures.engine import hf_model, make_engine, make_request, run_to_completion

from epochserve.proto.convert import OutputMode
from epochserve.sampling import SamplingParams
from epochserve.sampling.reference import token_logprobs
from epochserve.worker.engine import scheduler

CASES = [
    dict(temperature=0.0),  # greedy: the processing at temperature 1
    dict(temperature=0.7, top_k=20),
    dict(temperature=1.0, top_p=0.9),
    dict(temperature=1.3, min_p=0.05),
]
TOLERANCE = 1e-4  # fp32 CPU: the engine's and transformers' logits differ by ~1e-6 (engine parity tests)


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    model_dir = tiny_model_dirs["qwen3"]
    return model_dir, hf_model(model_dir)


def random_prompt(vocab_size: int, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (length,), generator=generator).tolist()


@torch.no_grad()
def reference_scores(reference, prompt: list[int], **case) -> list[float]:
    logits = reference(torch.tensor([prompt])).logits[0, :-1].float()
    return token_logprobs(logits, torch.tensor(prompt[1:]), SamplingParams(**case)).tolist()


def assert_scores_equal(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        if math.isinf(e):
            assert a == e, (i, a, e)  # outside the processed support on both sides
        else:
            assert a == pytest.approx(e, abs=TOLERANCE), (i, a, e)


def test_prompt_logprobs_match_the_reference_for_every_sample_and_setting(tiny, monkeypatch):
    model_dir, reference = tiny
    # Few scoring rows a step and small chunks: long prompts score over several steps, beside others.
    monkeypatch.setattr(scheduler, "MAX_PROMPT_SCORES_PER_STEP", 7)
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=512, max_num_batched_tokens=24)
    vocab = engine.model_config.vocab_size
    prompts = [random_prompt(vocab, n, seed=n) for n in (1, 2, 5, 17, 40)]
    requests = [
        make_request(
            f"r{c}-{i}", p, engine.limits, n=2, seed=i, max_tokens=3, return_prompt_logprobs=True, **case
        )
        for c, case in enumerate(CASES)
        for i, p in enumerate(prompts)
    ]
    results = run_to_completion(engine, requests)
    for c, case in enumerate(CASES):
        for i, prompt in enumerate(prompts):
            expected = reference_scores(reference, prompt, **case)
            for sample in results[f"r{c}-{i}"].values():  # sample 1 reports what sample 0 scored
                assert_scores_equal(sample.prompt_logprobs, expected)
    assert any(math.isinf(v) for r in results.values() for s in r.values() for v in s.prompt_logprobs)


def test_a_scored_prompt_is_computed_whole_even_when_its_prefix_is_cached(tiny):
    model_dir, reference = tiny
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=256)
    prompt = random_prompt(engine.model_config.vocab_size, 21, seed=3)
    warm = run_to_completion(engine, [make_request("warm", prompt, engine.limits, max_tokens=2)])
    again = run_to_completion(engine, [make_request("again", prompt, engine.limits, max_tokens=2)])
    assert warm["warm"][0].finish.prefix_cache_hit_blocks == 0
    assert again["again"][0].finish.prefix_cache_hit_blocks > 0  # the cache holds the prompt
    scored = run_to_completion(
        engine, [make_request("s", prompt, engine.limits, max_tokens=2, return_prompt_logprobs=True)]
    )["s"][0]
    assert scored.finish.prefix_cache_hit_blocks == 0
    assert_scores_equal(scored.prompt_logprobs, reference_scores(reference, prompt))


def test_scoring_a_sampled_completion_gives_back_its_logprobs(tiny):
    # A trainer's use: score prompt + completion and read the completion's processed logprobs.
    model_dir, _ = tiny
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=256)
    params = dict(temperature=0.8, top_p=0.9, seed=11)
    prompt = random_prompt(engine.model_config.vocab_size, 9, seed=5)
    sampled = run_to_completion(
        engine, [make_request("gen", prompt, engine.limits, max_tokens=12, ignore_eos=True, **params)]
    )["gen"][0]
    full = prompt + sampled.token_ids
    scored = run_to_completion(
        engine,
        [make_request("score", full, engine.limits, max_tokens=1, return_prompt_logprobs=True, **params)],
    )["score"][0]
    assert scored.prompt_logprobs[len(prompt) - 1 :] == pytest.approx(sampled.logprobs, abs=TOLERANCE)


def test_final_outputs_carry_the_prompt_logprobs_once_and_others_carry_none(tiny):
    model_dir, reference = tiny
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=256)
    prompt = random_prompt(engine.model_config.vocab_size, 10, seed=8)
    final = make_request(
        "f",
        prompt,
        engine.limits,
        n=2,
        max_tokens=4,
        return_prompt_logprobs=True,
        output_mode=OutputMode.FINAL,
    )
    plain = make_request("p", prompt, engine.limits, max_tokens=4)
    results = run_to_completion(engine, [final, plain])
    for sample in results["f"].values():
        assert_scores_equal(sample.prompt_logprobs, reference_scores(reference, prompt))
    assert results["p"][0].prompt_logprobs == []


def test_prompt_logprobs_survive_preemption(tiny, monkeypatch):
    # A KV pool too small for the batch: samples are preempted and recompute their tokens; a
    # prompt scored before (or partly before) a preemption is not scored twice.
    model_dir, reference = tiny
    monkeypatch.setattr(scheduler, "MAX_PROMPT_SCORES_PER_STEP", 9)
    engine = make_engine(model_dir, block_size=4, num_kv_blocks=30, max_num_batched_tokens=16)
    prompts = [random_prompt(engine.model_config.vocab_size, 30, seed=20 + i) for i in range(4)]
    requests = [
        make_request(f"q{i}", p, engine.limits, max_tokens=24, ignore_eos=True, return_prompt_logprobs=True)
        for i, p in enumerate(prompts)
    ]
    results = run_to_completion(engine, requests)
    assert sum(results[f"q{i}"][0].finish.num_preemptions for i in range(4)) > 0
    for i, prompt in enumerate(prompts):
        assert_scores_equal(results[f"q{i}"][0].prompt_logprobs, reference_scores(reference, prompt))
