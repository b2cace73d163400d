"""Scoring over HTTP on a scripted router: the prompt logprobs the engine returns in each sample's
first message, in OpenAI's shape (`echo` with `logprobs`), vLLM's (`prompt_logprobs`) and SGLang's
(`input_token_logprobs`); `max_tokens: 0` scores without returning a generated token; streamed
equals whole; top alternatives of prompt tokens are refused (the engine does not compute them)."""

from __future__ import annotations

import json

import openai
import pytest
from http_kit import EOT, REPLY, logprob, prompt_logprob, serve

from epochserve.router.httpfront import run

PROMPT = "hi you"
IDS = list(PROMPT.encode())
SCORES = [None, *(pytest.approx(prompt_logprob(i)) for i in range(1, len(IDS)))]
GENERATED = [*REPLY.encode(), EOT]


@pytest.fixture(scope="module")
def served():
    yield from serve()


@pytest.fixture
def backend(served):
    return served.fresh_backend()


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0)


def post(served, path: str, body: dict) -> dict:
    code, _, answer = served.post(path, body)
    assert code == 200, answer
    return answer


def test_echo_with_logprobs_puts_the_prompt_and_its_logprobs_first(client, backend):
    done = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=100, echo=True, logprobs=0)
    choice = done.choices[0]
    assert choice.text == PROMPT + REPLY
    logprobs = choice.logprobs
    assert logprobs.tokens[: len(IDS)] == list(PROMPT) and len(logprobs.tokens) == len(IDS) + len(GENERATED)
    assert logprobs.token_logprobs[: len(IDS)] == SCORES
    assert logprobs.token_logprobs[len(IDS) :] == [
        pytest.approx(logprob(0, p)) for p in range(len(GENERATED))
    ]
    assert logprobs.text_offset[: len(IDS) + 1] == list(range(len(IDS) + 1))  # the text goes on after it
    assert logprobs.top_logprobs is None and choice.token_ids == GENERATED  # type: ignore[attr-defined]
    (request,) = backend.requests
    assert request.sampling.return_prompt_logprobs and request.sampling.max_tokens == 100


def test_echo_alone_asks_no_scores_and_max_tokens_0_scores_without_generating(client, backend):
    done = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=3, echo=True)
    assert done.choices[0].text == PROMPT + "hé" and done.choices[0].logprobs is None
    assert not backend.requests[0].sampling.return_prompt_logprobs

    scored = client.completions.create(model="tiny", prompt=IDS, max_tokens=0, echo=True, logprobs=0)
    choice = scored.choices[0]
    assert (choice.text, choice.finish_reason, choice.token_ids) == (PROMPT, "length", [])  # type: ignore[attr-defined]
    assert choice.logprobs.token_logprobs == SCORES and choice.logprobs.tokens == list(PROMPT)
    assert scored.usage.completion_tokens == 0
    assert backend.requests[1].sampling.max_tokens == 1  # the one step that scores the prompt


def test_vllm_prompt_logprobs_on_every_choice(served, backend):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 3, "n": 2, "prompt_logprobs": 0}
    done = post(served, "/v1/completions", body)
    expected = [None] + [
        {str(t): {"logprob": pytest.approx(prompt_logprob(i)), "decoded_token": chr(t)}}
        for i, t in enumerate(IDS)
        if i
    ]
    assert [c["prompt_logprobs"] for c in done["choices"]] == [expected, expected]
    assert [c["text"] for c in done["choices"]] == ["hé", "hé"] and done["choices"][0]["logprobs"] is None


def test_a_streamed_echo_equals_the_whole_one(client, backend):
    fields = dict(model="tiny", prompt=PROMPT, max_tokens=100, n=2, echo=True, logprobs=0)
    extra = {"prompt_logprobs": 0}
    whole = client.completions.create(**fields, extra_body=extra)
    texts, tokens, values, offsets = ["", ""], [[], []], [[], []], [[], []]
    scored = [[], []]
    for chunk in client.completions.create(**fields, extra_body=extra, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.text
            tokens[c.index] += c.logprobs.tokens
            values[c.index] += c.logprobs.token_logprobs
            offsets[c.index] += c.logprobs.text_offset
            if getattr(c, "prompt_logprobs", None) is not None:
                scored[c.index].append(c.prompt_logprobs)  # type: ignore[attr-defined]
    for c in whole.choices:
        assert texts[c.index] == c.text == PROMPT + REPLY
        assert (tokens[c.index], values[c.index]) == (c.logprobs.tokens, c.logprobs.token_logprobs)
        # (past the prompt, offsets count token texts, which differ around a multi-byte character)
        assert offsets[c.index][: len(IDS) + 1] == c.logprobs.text_offset[: len(IDS) + 1]
        assert scored[c.index] == [c.prompt_logprobs]  # type: ignore[attr-defined]  # once: the first chunk


def test_chat_prompt_logprobs_once_per_response(served, backend, monkeypatch):
    monkeypatch.setattr(run, "_MAX_COALESCING_TURNS", 0)  # only what is queued at a wake-up: more events
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "yo"}],
        "max_tokens": 30,
        "prompt_logprobs": 0,
    }
    done = post(served, "/v1/chat/completions", body)
    prompt = done["prompt_token_ids"]
    assert done["prompt_logprobs"][0] is None and len(done["prompt_logprobs"]) == len(prompt)
    assert done["prompt_logprobs"][-1] == {
        str(prompt[-1]): {"logprob": pytest.approx(prompt_logprob(len(prompt) - 1)), "decoded_token": "\n"}
    }
    code, _, text = served.post("/v1/chat/completions", {**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert code == 200 and len(chunks) > 1 and not [c for c in chunks if "error" in c]
    assert [c.get("prompt_logprobs") for c in chunks] == [done["prompt_logprobs"]] + [None] * (
        len(chunks) - 1
    )


def test_sglang_input_token_logprobs_from_logprob_start_len(served, backend, monkeypatch):
    monkeypatch.setattr(run, "_MAX_COALESCING_TURNS", 0)  # only what is queued at a wake-up: more events
    ids = [5, 6, 7, 8]
    body = {"input_ids": ids, "return_logprob": True, "logprob_start_len": 0, "return_text_in_logprobs": True}
    out = post(served, "/generate", {**body, "sampling_params": {"max_new_tokens": 2}})
    assert out["meta_info"]["input_token_logprobs"] == [
        [None, 5, "\x05"], *([pytest.approx(prompt_logprob(i)), t, chr(t)] for i, t in enumerate(ids) if i)
    ]  # fmt: skip
    assert out["meta_info"]["output_token_logprobs"][0] == [pytest.approx(logprob(0, 0)), ord("h"), "h"]
    out = post(served, "/generate", {**body, "logprob_start_len": 2, "return_text_in_logprobs": False})
    assert out["meta_info"]["input_token_logprobs"] == [
        [pytest.approx(-0.2), 7, None],
        [pytest.approx(-0.3), 8, None],
    ]

    scored = post(served, "/generate", {**body, "sampling_params": {"max_new_tokens": 0}})
    meta = scored["meta_info"]
    assert (scored["text"], scored["output_ids"], meta["output_token_logprobs"]) == ("", [], [])
    assert meta["finish_reason"] == {"type": "length", "length": 0} and meta["completion_tokens"] == 0
    assert len(meta["input_token_logprobs"]) == len(ids)
    assert [r.sampling.max_tokens for r in backend.requests] == [2, 128, 1]

    code, _, text = served.post(
        "/generate", {**body, "stream": True, "sampling_params": {"max_new_tokens": 9}}
    )
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert not [e for e in events if "error" in e]
    has_scores = [("input_token_logprobs" in e["meta_info"]) for e in events]
    assert code == 200 and len(events) > 1 and has_scores == [True] + [False] * (len(events) - 1)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"echo": True, "logprobs": 2}, "logprobs"),
        ("/v1/completions", {"prompt_logprobs": 1}, "prompt_logprobs"),
        ("/v1/completions", {"max_tokens": 0}, "max_tokens"),  # generates nothing, returns nothing
        ("/v1/chat/completions", {"prompt_logprobs": 5}, "prompt_logprobs"),
        ("/generate", {"return_logprob": True, "logprob_start_len": 3}, "logprob_start_len"),
        ("/generate", {"return_logprob": True, "logprob_start_len": -2}, "logprob_start_len"),
        (
            "/generate",
            {"return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2},
            "top_logprobs_num",
        ),
    ],
)
def test_what_scoring_cannot_answer_is_400_naming_the_field(served, backend, path, body, param):
    base = {
        "model": "tiny",
        "prompt": PROMPT,
        "messages": [{"role": "user", "content": "yo"}],
        "input_ids": [5, 6, 7],
    }
    code, _, answer = served.post(path, {**base, **body})
    assert (code, answer["error"]["param"]) == (400, param), answer
    assert not backend.requests
