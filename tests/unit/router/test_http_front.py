"""The HTTP front (router/httpfront/) on a scripted router, through the official openai client and
raw HTTP: translation into GenerateRequests, text and logprob shapes, streaming = whole, stop
strings, the RL extensions, and every refusal in OpenAI's error shape."""

from __future__ import annotations

import json

import openai
import pytest
from http_kit import REPLY, VERSION, ScriptedBackend, ServedFront, logprob

from epochserve.proto.v1 import common_pb2
from epochserve.router.errors import NoWorkerError, QueueFullError, WaitDeadlineError

KEY = "sekrit-key"


@pytest.fixture(scope="module")
def served():
    front = ServedFront(ScriptedBackend(), max_body_bytes=64 * 1024)
    yield front
    front.close()


@pytest.fixture
def backend(served):
    served.backend.__init__()  # a fresh script per test, same server
    return served.backend


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base_url, api_key="unused", max_retries=0)


def test_models_and_health(served, client):
    assert [(m.id, m.max_model_len, m.policy_version) for m in client.models.list().data] == [
        ("tiny", 512, VERSION)
    ]
    assert served.get("/health")[:3:2] == (200, {"status": "ok", "policy_version": VERSION})


def test_completion_is_text_with_token_ids_policy_version_and_uses_final_mode(client, backend):
    done = client.completions.create(model="tiny", prompt="hi", max_tokens=100, temperature=0)
    choice = done.choices[0]
    assert choice.text == REPLY and choice.finish_reason == "stop"
    assert choice.token_ids == [*REPLY.encode(), 256]  # type: ignore[attr-defined]
    assert done.policy_version == VERSION and done.prompt_token_ids == list(b"hi")  # type: ignore[attr-defined]
    assert done.usage.completion_tokens == len(REPLY.encode()) + 1
    (request,) = backend.requests
    assert request.output_mode == common_pb2.OUTPUT_MODE_FINAL and request.sampling.temperature == 0
    assert list(request.prompt_token_ids) == list(b"hi") and request.sampling.max_tokens == 100


def test_openai_defaults_and_extensions_reach_the_request(client, backend):
    extensions = {"top_k": 4, "min_p": 0.1, "min_policy_version": 6, "ignore_eos": True}
    client.completions.create(model="tiny", prompt=[5, 6], n=2, seed=3, top_p=0.5, extra_body=extensions)
    (request,) = backend.requests
    sampling = request.sampling
    assert (request.n, sampling.seed, sampling.top_k, sampling.max_tokens, request.min_policy_version) == (
        2,
        3,
        4,
        16,
        6,
    )
    assert (round(sampling.top_p, 6), round(sampling.min_p, 6), sampling.ignore_eos) == (0.5, 0.1, True)


def test_streamed_chat_equals_the_whole_one_and_never_splits_a_character(client, backend):
    messages = [{"role": "user", "content": "hi"}]
    whole = client.chat.completions.create(
        model="tiny", messages=messages, n=2, logprobs=True, top_logprobs=2
    )
    stream = client.chat.completions.create(
        model="tiny", messages=messages, n=2, logprobs=True, top_logprobs=2, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    texts, ids, lps, versions, finish = ["", ""], [[], []], [[], []], set(), {}
    usage = None
    for chunk in stream:
        versions.add(chunk.policy_version)  # type: ignore[attr-defined]
        usage = chunk.usage or usage
        for c in chunk.choices:
            assert "\ufffd" not in (c.delta.content or "")
            texts[c.index] += c.delta.content or ""
            ids[c.index] += c.token_ids  # type: ignore[attr-defined]
            lps[c.index] += [t.logprob for t in (c.logprobs.content if c.logprobs else [])]
            finish[c.index] = c.finish_reason or finish.get(c.index)
    assert versions == {VERSION} and usage == whole.usage
    for c in whole.choices:
        assert (texts[c.index], ids[c.index], finish[c.index]) == (
            c.message.content,
            c.token_ids,
            c.finish_reason,
        )  # type: ignore[attr-defined]
        assert lps[c.index] == [t.logprob for t in c.logprobs.content]
        assert [round(t.logprob, 5) for t in c.logprobs.content[:2]] == [
            round(logprob(c.index, p), 5) for p in (0, 1)
        ]
        assert [(t.token, t.logprob) for t in c.logprobs.content[0].top_logprobs] == [
            ("e", -0.5),
            ("f", -1.5),
        ]
    assert [r.output_mode for r in backend.requests] == [
        common_pb2.OUTPUT_MODE_FINAL,
        common_pb2.OUTPUT_MODE_STREAM,
    ]


def test_a_stop_string_is_cut_out_ends_the_sample_and_aborts_the_request(client, backend):
    for stream in (False, True):
        if stream:
            chunks = list(
                client.completions.create(
                    model="tiny", prompt="x", stop=[" STOP"], stream=True, max_tokens=100
                )
            )
            text = "".join(c.choices[0].text for c in chunks if c.choices)
            ids = [t for c in chunks for t in c.choices[0].token_ids]  # type: ignore[attr-defined]
            reason = chunks[-1].choices[0].finish_reason
        else:
            done = client.completions.create(model="tiny", prompt="x", stop=[" STOP", "zzz"], max_tokens=100)
            text, ids, reason = done.choices[0].text, done.choices[0].token_ids, done.choices[0].finish_reason  # type: ignore[attr-defined]
        assert (text, reason) == ("héllo wörld 🎉", "stop")
        assert bytes(ids).decode() == "héllo wörld 🎉 STOP"  # up to the token that completed the match
    assert all(r.output_mode == common_pb2.OUTPUT_MODE_STREAM for r in backend.requests)
    assert backend.aborted == [r.request_id for r in backend.requests]


def test_completion_logprobs_and_raw_logprobs_have_openais_shape(client):
    done = client.completions.create(model="tiny", prompt="x", max_tokens=2, logprobs=2,
                                     extra_body={"return_raw_logprobs": True})  # fmt: skip
    logprobs = done.choices[0].logprobs
    assert logprobs.tokens == ["h", "\ufffd"] and logprobs.text_offset == [0, 1]
    assert logprobs.top_logprobs == [{"e": -0.5, "f": -1.5}] * 2
    assert done.choices[0].raw_logprobs == [-1.0] * 2 and done.choices[0].finish_reason == "length"  # type: ignore[attr-defined]
    assert done.choices[0].text == "h\ufffd"  # the sample ended inside "é": shown as U+FFFD


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"temperature": -1}, 400, "temperature"),
        ({"max_tokens": 10**12}, 400, "max_tokens"),
        ({"n": 0}, 400, "n"),
        ({"n": 5}, 400, "n"),
        ({"top_p": 0}, 400, "top_p"),
        ({"seed": -1}, 400, "seed"),
        ({"presence_penalty": 1.0}, 400, "presence_penalty"),
        ({"prompt": ["a", "b"]}, 400, "prompt"),
        ({"prompt_token_ids": [300]}, 400, "prompt_token_ids"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"model": "gpt-4"}, 404, "model"),
    ],
)
def test_invalid_fields_get_4xx_in_openais_shape_naming_the_field(served, backend, fields, status, param):
    code, _, body = served.post("/v1/completions", {"model": "tiny", "prompt": "x", **fields})
    assert (code, body["error"]["param"]) == (status, param), body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert backend.requests == []  # never reached the router's request path
    assert served.post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2})[0] == 200


def test_the_same_rules_as_grpc_give_the_same_message(served):
    from epochserve.sampling import SamplingParams

    with pytest.raises(Exception) as grpc_side:
        SamplingParams(temperature=-1.0)
    body = served.post("/v1/chat/completions", {"model": "tiny", "messages": [], "temperature": -1})[2]
    assert body["error"]["message"] == "messages: at least one message is required"
    messages = [{"role": "user", "content": "x"}]
    body = served.post("/v1/chat/completions", {"model": "tiny", "messages": messages, "temperature": -1})[2]
    assert body["error"]["message"] == str(grpc_side.value)


def test_malformed_json_oversized_bodies_and_unknown_paths(served, backend):
    code, _, body = served.post("/v1/completions", b'{"model": "tiny", "prompt": ')
    assert (code, body["error"]["code"]) == (400, "invalid_json")
    code, _, body = served.post("/v1/completions", {"model": "tiny", "prompt": "x" * 70_000})
    assert (code, body["error"]["code"]) == (413, "request_too_large") and "65536 bytes" in body["error"][
        "message"
    ]
    assert served.get("/v1/nothing")[0] == 404
    assert backend.requests == []
    assert served.post("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2})[0] == 200


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (QueueFullError("r", 0, 8, 2.5), 429, "3"),
        (NoWorkerError("request r: no worker serving policy version 0"), 503, None),
        (WaitDeadlineError("request r: deadline exceeded"), 504, None),
    ],
)
def test_router_errors_get_their_status_before_and_after_a_stream_started(
    served, backend, error, status, retry_after
):
    backend.fail_with = error
    for stream in (False, True):
        code, headers, body = served.post(
            "/v1/completions", {"model": "tiny", "prompt": "x", "stream": stream}
        )
        assert (code, headers.get("Retry-After"), body["error"]["message"]) == (
            status,
            retry_after,
            str(error),
        )


def test_api_key_is_required_when_configured():
    served = ServedFront(ScriptedBackend(), api_key=KEY)
    try:
        assert served.get("/v1/models")[0] == 401
        assert served.get("/v1/models", {"Authorization": "Bearer wrong"})[0] == 401
        assert served.get("/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200
        assert served.get("/health")[0] == 200  # probes carry no key
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=served.base_url, api_key="wrong", max_retries=0).models.list()
    finally:
        served.close()


def test_health_is_503_until_the_router_serves(served, backend):
    backend.is_serving = False
    assert served.get("/health")[0] == 503
    body = served.post("/v1/completions", {"model": "tiny", "prompt": "x", "stream": True})[2]
    assert json.dumps(body)  # requests still answer (the backend decides)
