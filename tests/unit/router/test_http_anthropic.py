"""POST /v1/messages (Anthropic's Messages API) on a scripted router, through the official anthropic
client and raw HTTP: the chat template's prompt, text and stop reasons, the event sequence of a
stream, stop sequences, the RL extensions, x-api-key, and every refusal in Anthropic's error shape."""

from __future__ import annotations

import json

import anthropic
import pytest
from http_kit import EOT, REPLY, VERSION, ScriptedBackend, ServedFront, serve

from epochserve.proto.v1 import common_pb2
from epochserve.router.errors import NoWorkerError, QueueFullError, WaitDeadlineError

KEY = "sekrit-key"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def served():
    yield from serve(max_body_bytes=64 * 1024)


@pytest.fixture
def backend(served):
    return served.fresh_backend()


@pytest.fixture(scope="module")
def client(served):
    return anthropic.Anthropic(base_url=served.root_url, api_key="unused", max_retries=0)


def events_of(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_a_message_is_the_chat_templates_prompt_answered(client, backend):
    done = client.messages.create(
        model="tiny",
        max_tokens=100,
        system=[{"type": "text", "text": "be brief"}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        metadata={"user_id": "u"},
        extra_body={"temperature": 0, "top_k": 3},  # this client version has no keywords for them
    )
    assert [(block.type, block.text) for block in done.content] == [("text", REPLY)]
    assert (done.stop_reason, done.stop_sequence, done.role, done.model) == (
        "end_turn",
        None,
        "assistant",
        "tiny",
    )
    prompt = list(b"system: be brief\nuser: hi\n")
    assert (done.usage.input_tokens, done.usage.output_tokens) == (len(prompt), len(REPLY.encode()) + 1)
    assert done.policy_version == VERSION and done.prompt_token_ids == prompt  # type: ignore[attr-defined]
    assert done.token_ids == [*REPLY.encode(), EOT]  # type: ignore[attr-defined]
    (request,) = backend.requests
    assert list(request.prompt_token_ids) == prompt and request.output_mode == common_pb2.OUTPUT_MODE_FINAL
    assert (request.sampling.temperature, request.sampling.top_k, request.sampling.max_tokens) == (0, 3, 100)


def test_a_stream_is_anthropics_event_sequence_and_equals_the_whole_message(client, served, backend):
    whole = client.messages.create(model="tiny", max_tokens=100, messages=MESSAGES)
    events = list(client.messages.create(model="tiny", max_tokens=100, messages=MESSAGES, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    assert all(e.policy_version == VERSION for e in events)  # type: ignore[attr-defined]
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert "".join(e.delta.text for e in deltas) == whole.content[0].text == REPLY
    assert [t for e in deltas for t in e.token_ids] == whole.token_ids  # type: ignore[attr-defined]
    assert events[0].message.prompt_token_ids == whole.prompt_token_ids  # type: ignore[attr-defined]
    assert (events[-2].delta.stop_reason, events[-2].usage.output_tokens) == (
        "end_turn",
        whole.usage.output_tokens,
    )
    assert backend.requests[-1].output_mode == common_pb2.OUTPUT_MODE_STREAM
    code, headers, text = served.post(
        "/v1/messages", {"model": "tiny", "max_tokens": 9, "messages": MESSAGES, "stream": True}
    )
    assert (code, headers.get_content_type()) == (200, "text/event-stream")
    assert [name for name, _ in events_of(text)] == [data["type"] for _, data in events_of(text)]


def test_stop_sequences_and_max_tokens_give_their_stop_reasons(client, backend):
    cut = client.messages.create(
        model="tiny", max_tokens=100, messages=MESSAGES, stop_sequences=["zzz", "STOP"]
    )
    assert (cut.content[0].text, cut.stop_reason, cut.stop_sequence) == (
        REPLY[: REPLY.index("STOP")],
        "stop_sequence",
        "STOP",
    )
    assert backend.aborted == [backend.requests[0].request_id]  # the worker stopped once it matched
    streamed = list(
        client.messages.create(
            model="tiny", max_tokens=100, messages=MESSAGES, stop_sequences=["STOP"], stream=True
        )
    )
    assert (streamed[-2].delta.stop_reason, streamed[-2].delta.stop_sequence) == ("stop_sequence", "STOP")
    short = client.messages.create(model="tiny", max_tokens=5, messages=MESSAGES)
    assert (short.content[0].text, short.stop_reason, short.usage.output_tokens) == (
        "héll",
        "max_tokens",
        5,
    )


def test_rl_extensions_reach_the_request(client, backend):
    done = client.messages.create(
        model="tiny", max_tokens=4, messages=MESSAGES,
        extra_body={"min_policy_version": 6, "return_raw_logprobs": True, "seed": 5, "output_mode": "stream"},
    )  # fmt: skip
    assert done.raw_logprobs == [-1.0] * 4  # type: ignore[attr-defined]
    (request,) = backend.requests
    assert (request.min_policy_version, request.sampling.seed, request.output_mode) == (
        6, 5, common_pb2.OUTPUT_MODE_STREAM,
    )  # fmt: skip
    ids = client.messages.create(
        model="tiny", max_tokens=4, messages=MESSAGES, extra_body={"prompt_token_ids": [1, 2]}
    )
    assert ids.prompt_token_ids == [1, 2]  # type: ignore[attr-defined]


GOOD = {"model": "tiny", "max_tokens": 8, "messages": MESSAGES}


@pytest.mark.parametrize(
    ("fields", "status", "kind"),
    [
        ({"max_tokens": None}, 400, "invalid_request_error"),
        ({"temperature": -1}, 400, "invalid_request_error"),
        ({"top_p": 0}, 400, "invalid_request_error"),
        ({"max_tokens": 10**6}, 400, "invalid_request_error"),
        ({"messages": []}, 400, "invalid_request_error"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            400,
            "invalid_request_error",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_request_error"),
        ({"n": 2}, 400, "invalid_request_error"),
        ({"tools": [{"name": "f", "input_schema": {}}]}, 400, "invalid_request_error"),
        ({"model": "claude"}, 404, "not_found_error"),
    ],
)
def test_bad_requests_get_4xx_in_anthropics_shape(served, backend, fields, status, kind):
    body = {k: v for k, v in {**GOOD, **fields}.items() if v is not None}
    code, _, answer = served.post("/v1/messages", body)
    assert (code, answer["type"], answer["error"]["type"]) == (status, "error", kind), answer
    assert set(answer["error"]) == {"type", "message"} and answer["error"]["message"]
    assert backend.requests == []  # never reached the router's request path
    assert served.post("/v1/messages", GOOD)[0] == 200


def test_the_anthropic_client_raises_each_refusal(client):
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        client.messages.create(
            model="tiny", max_tokens=8, messages=MESSAGES, extra_body={"temperature": -0.5}
        )
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude", max_tokens=8, messages=MESSAGES)
    assert client.messages.create(model="tiny", max_tokens=8, messages=MESSAGES).content[0].text


def test_malformed_json_and_oversized_bodies(served):
    code, _, answer = served.post("/v1/messages", b'{"model": "tiny", ')
    assert (code, answer["error"]["type"]) == (400, "invalid_request_error")
    code, _, answer = served.post("/v1/messages", {**GOOD, "system": "x" * 70_000})
    assert (code, answer["error"]["type"]) == (413, "request_too_large")


@pytest.mark.parametrize(
    ("error", "status", "kind", "retry_after"),
    [
        (QueueFullError("r", 0, 8, 2.5), 429, "rate_limit_error", "3"),
        (NoWorkerError("request r: no worker serving policy version 0"), 503, "overloaded_error", None),
        (WaitDeadlineError("request r: deadline exceeded"), 504, "timeout_error", None),
    ],
)
def test_router_errors_get_their_status_and_anthropic_type(served, backend, error, status, kind, retry_after):
    backend.fail_with = error
    for stream in (False, True):
        code, headers, answer = served.post("/v1/messages", {**GOOD, "stream": stream})
        assert (code, headers.get("Retry-After"), answer["error"]) == (
            status, retry_after, {"type": kind, "message": str(error)},
        )  # fmt: skip


def test_a_failure_after_the_stream_started_is_an_error_event(client, backend):
    backend.fail_after_first = NoWorkerError("request r: worker lost")
    with pytest.raises(anthropic.APIStatusError, match="worker lost"):
        list(client.messages.create(model="tiny", max_tokens=100, messages=MESSAGES, stream=True))


def test_x_api_key_or_bearer_when_a_key_is_set():
    served = ServedFront(ScriptedBackend(), api_key=KEY)
    try:
        assert served.post("/v1/messages", GOOD, {"x-api-key": KEY})[0] == 200
        assert served.post("/v1/messages", GOOD, {"Authorization": f"Bearer {KEY}"})[0] == 200
        code, _, answer = served.post("/v1/messages", GOOD, {"x-api-key": "wrong"})
        assert (code, answer["error"]["type"]) == (401, "authentication_error")
        code, _, answer = served.post("/v1/completions", {"model": "tiny", "prompt": "x"}, {"x-api-key": KEY})
        assert (code, answer["error"]["code"]) == (401, "invalid_api_key")  # OpenAI's routes: Bearer only
        good = anthropic.Anthropic(base_url=served.root_url, api_key=KEY, max_retries=0)
        assert good.messages.create(model="tiny", max_tokens=4, messages=MESSAGES).content[0].text == "hél"
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=served.root_url, api_key="wrong", max_retries=0).messages.create(
                model="tiny", max_tokens=3, messages=MESSAGES
            )
    finally:
        served.close()
