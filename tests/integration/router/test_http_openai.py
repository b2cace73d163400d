"""The HTTP front end to end (real etcd, coordinator, one SmolLM2 worker on CPU fp32, a router with
--http-port and --tokenizer) through the official openai client: text equal to transformers
`generate` on the same prompt and chat template, streaming equal to whole, n and seed replayable,
stop strings, processed logprobs equal to transformers' warpers, the bad-input matrix, and scoring
(prompt logprobs in OpenAI's, vLLM's and SGLang's shapes). One cluster for the module; short
generations (2 CPU cores). Concurrency during a rollout: test_http_sglang_rollouts.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest
import torch
from fixtures.engine import hf_greedy, hf_model, hf_next_token_logits, hf_processed_logprobs
from http_clusters import front_url, http_cluster

MESSAGES = [{"role": "user", "content": "Name three colors."}]
PROMPT = "The capital of France is"
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def base_url(smollm2_dir, tmp_path_factory):
    with http_cluster(tmp_path_factory.mktemp("http"), smollm2_dir) as cluster:
        yield f"{front_url(cluster)}/v1"


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir), hf_model(smollm2_dir)


def chat_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def test_models_lists_the_served_model(client, smollm2_dir):
    (model,) = client.models.list().data
    assert model.id == smollm2_dir.name and model.policy_version == 0  # type: ignore[attr-defined]


def test_greedy_completion_and_chat_equal_transformers_generate(client, reference, smollm2_dir):
    tokenizer, model = reference
    done = client.completions.create(
        model=smollm2_dir.name, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0
    )
    prompt_ids = tokenizer.encode(PROMPT)
    expected = hf_greedy(model, prompt_ids, NEW_TOKENS)
    assert done.prompt_token_ids == prompt_ids and done.policy_version == 0  # type: ignore[attr-defined]
    assert done.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)

    chat = client.chat.completions.create(
        model=smollm2_dir.name, messages=MESSAGES, max_completion_tokens=NEW_TOKENS, temperature=0
    )
    prompt_ids = chat_ids(tokenizer, MESSAGES)
    expected = hf_greedy(model, prompt_ids, NEW_TOKENS)
    assert chat.prompt_token_ids == prompt_ids  # type: ignore[attr-defined]
    assert chat.choices[0].message.content == tokenizer.decode(expected, skip_special_tokens=True)
    assert chat.choices[0].token_ids == expected[: len(chat.choices[0].token_ids)]  # type: ignore[attr-defined]


def test_streaming_equals_whole_and_n_with_a_seed_replays(client, smollm2_dir):
    fields = dict(
        model=smollm2_dir.name, messages=MESSAGES, max_tokens=NEW_TOKENS, n=2, seed=11, temperature=1.0
    )
    first = client.chat.completions.create(**fields)
    again = client.chat.completions.create(**fields)
    assert [c.token_ids for c in first.choices] == [c.token_ids for c in again.choices]  # type: ignore[attr-defined]
    texts, ids = ["", ""], [[], []]
    for chunk in client.chat.completions.create(**fields, stream=True):
        assert chunk.policy_version == 0  # type: ignore[attr-defined]
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            ids[c.index] += c.token_ids  # type: ignore[attr-defined]
    assert texts == [c.message.content for c in first.choices]
    assert ids == [c.token_ids for c in first.choices]  # type: ignore[attr-defined]


def test_a_stop_string_ends_the_text_before_it(client, smollm2_dir):
    fields = dict(model=smollm2_dir.name, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
    full = client.completions.create(**fields).choices[0].text
    stop = full.strip().split(" ")[1]  # a word inside the greedy text
    cut = client.completions.create(**fields, stop=[stop]).choices[0]
    assert (cut.text, cut.finish_reason) == (full[: full.index(stop)], "stop")


def test_sampled_chat_logprobs_are_transformers_processed_ones(client, reference, smollm2_dir):
    tokenizer, model = reference
    done = client.chat.completions.create(
        model=smollm2_dir.name, messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0.7, top_p=0.9,
        seed=3, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    choice = done.choices[0]
    generated = choice.token_ids  # type: ignore[attr-defined]
    logits = hf_next_token_logits(model, done.prompt_token_ids, generated)  # type: ignore[attr-defined]
    expected = hf_processed_logprobs(logits, temperature=0.7, top_p=0.9)
    expected = expected.gather(1, torch.tensor(generated)[:, None])[:, 0]
    got = torch.tensor([t.logprob for t in choice.logprobs.content])
    assert len(got) == len(generated) and torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert [t.token for t in choice.logprobs.content] == [tokenizer.decode([t]) for t in generated]


def test_bad_input_gets_its_4xx_and_the_next_good_request_succeeds(client, base_url, smollm2_dir):
    good = dict(model=smollm2_dir.name, prompt=PROMPT, max_tokens=2)
    bad = [
        (openai.BadRequestError, {"temperature": -0.5}),
        (openai.BadRequestError, {"max_tokens": 10**9}),
        (openai.BadRequestError, {"n": 0}),
        (openai.NotFoundError, {"model": "no-such-model"}),
    ]
    for error, fields in bad:
        with pytest.raises(error):
            client.completions.create(**{**good, **fields})
        assert client.completions.create(**good).choices[0].text
    for body, status in (
        (b'{"model": "x", "prompt": ', 400),
        (json.dumps({**good, "prompt": "a" * 5_000_000}).encode(), 413),
    ):
        request = urllib.request.Request(
            f"{base_url}/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == status and "error" in json.loads(refused.value.read())
        assert client.completions.create(**good).choices[0].text


def test_prompt_logprobs_are_the_logprobs_the_engine_sampled_with(client, base_url, smollm2_dir):
    """Scoring prompt + a sampled completion (the same sampling params and seed) gives, at the
    completion's positions, the processed logprobs the engine returned as it sampled them: as
    OpenAI's echo, vLLM's prompt_logprobs and SGLang's input_token_logprobs."""
    fields = {"model": smollm2_dir.name, "temperature": 0.7, "top_p": 0.9, "seed": 5}
    sampled = client.completions.create(**fields, prompt=PROMPT, max_tokens=NEW_TOKENS, logprobs=0)
    prompt, generated = sampled.prompt_token_ids, sampled.choices[0].token_ids  # type: ignore[attr-defined]
    expected = torch.tensor(sampled.choices[0].logprobs.token_logprobs)
    full = prompt + generated

    def assert_close(scores: list[float]) -> None:
        got = torch.tensor(scores)
        assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=0)

    echoed = client.completions.create(**fields, prompt=full, max_tokens=0, echo=True, logprobs=0)
    token_logprobs = echoed.choices[0].logprobs.token_logprobs
    assert len(token_logprobs) == len(full) and token_logprobs[0] is None
    assert echoed.usage.completion_tokens == 0
    assert_close(token_logprobs[len(prompt) :])

    vllm = client.completions.create(**fields, prompt=full, max_tokens=1, extra_body={"prompt_logprobs": 0})
    entries = vllm.choices[0].prompt_logprobs[len(prompt) :]  # type: ignore[attr-defined]
    assert_close([entry[str(t)]["logprob"] for entry, t in zip(entries, generated, strict=True)])

    sampling = {"max_new_tokens": 0, "temperature": 0.7, "top_p": 0.9, "sampling_seed": 5}
    body = {"input_ids": full, "sampling_params": sampling, "return_logprob": True}
    sglang = post_json(f"{base_url.removesuffix('/v1')}/generate", {**body, "logprob_start_len": len(prompt)})
    scores = sglang["meta_info"]["input_token_logprobs"]
    assert [t for _, t, _ in scores] == generated
    assert_close([lp for lp, _, _ in scores])


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())
