"""Routing replay over HTTP (return_routed_experts) on a scripted router: each choice's
`routed_experts` (one list per generated token, layer-major) and `prompt_routed_experts` (one per
prompt position) on /v1/completions, /v1/chat/completions and /generate's meta_info; a stream's
chunks carry their own tokens' routing, the prompt's once; a dense model is a 400 naming the field."""

from __future__ import annotations

import json

import pytest
from http_kit import REPLY, experts, serve, token_position

from epochserve.router.httpfront import run

IDS = [5, 6, 7]


@pytest.fixture(scope="module")
def served():
    yield from serve()


@pytest.fixture
def moe(served):
    backend = served.fresh_backend()
    backend.is_moe = True
    return backend


def post(served, path: str, body: dict) -> dict:
    code, _, answer = served.post(path, body)
    assert code == 200, answer
    return answer


def events(served, path: str, body: dict) -> list[dict]:
    code, _, text = served.post(path, {**body, "stream": True})
    assert code == 200, text
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def expected_routing(sample: int, num_tokens: int) -> list[list[int]]:
    return [experts(token_position(sample, p)) for p in range(num_tokens)]


PROMPT_ROUTING = [experts(p) for p in range(len(IDS))]


def test_completions_return_every_tokens_and_every_prompt_positions_experts(served, moe):
    body = {"model": "tiny", "prompt_token_ids": IDS, "max_tokens": 8, "n": 2, "return_routed_experts": True}
    done = post(served, "/v1/completions", body)
    assert moe.requests[0].sampling.return_routed_experts
    for choice in done["choices"]:
        assert len(choice["token_ids"]) == 8
        assert choice["routed_experts"] == expected_routing(choice["index"], 8)
        assert choice["prompt_routed_experts"] == PROMPT_ROUTING


def test_a_chat_streams_chunks_carry_their_own_tokens_routing_and_the_prompts_once(served, moe, monkeypatch):
    monkeypatch.setattr(run, "_MAX_COALESCING_TURNS", 0)  # only what is queued at a wake-up: more events
    body = {"model": "tiny", "prompt_token_ids": IDS, "n": 2, "return_routed_experts": True,
            "messages": []}  # fmt: skip
    whole = post(served, "/v1/chat/completions", body)
    chunks = events(served, "/v1/chat/completions", body)
    assert len(chunks) > 2
    for choice in whole["choices"]:
        index = choice["index"]
        parts = [c for chunk in chunks for c in chunk["choices"] if c["index"] == index]
        assert all(len(c["routed_experts"]) == len(c["token_ids"]) for c in parts)
        assert [r for c in parts for r in c["routed_experts"]] == choice["routed_experts"]
        assert choice["routed_experts"] == expected_routing(index, len(REPLY.encode()) + 1)
        prompt_parts = [c["prompt_routed_experts"] for c in parts]
        assert prompt_parts[0] == PROMPT_ROUTING and all(p == [] for p in prompt_parts[1:])


def test_generate_puts_the_routing_in_meta_info(served, moe):
    body = {"input_ids": IDS, "sampling_params": {"max_new_tokens": 4}, "return_routed_experts": True}
    meta = post(served, "/generate", body)["meta_info"]
    assert meta["routed_experts"] == expected_routing(0, 4)
    assert meta["prompt_routed_experts"] == PROMPT_ROUTING
    streamed = events(served, "/generate", body)
    assert [r for e in streamed for r in e["meta_info"]["routed_experts"]] == expected_routing(0, 4)
    assert streamed[0]["meta_info"]["prompt_routed_experts"] == PROMPT_ROUTING


def test_without_the_flag_there_is_no_routing(served, moe):
    done = post(served, "/v1/completions", {"model": "tiny", "prompt_token_ids": IDS, "max_tokens": 2})
    assert "routed_experts" not in done["choices"][0] and not moe.requests[0].sampling.return_routed_experts
    meta = post(served, "/generate", {"input_ids": IDS, "sampling_params": {"max_new_tokens": 2}})[
        "meta_info"
    ]
    assert "routed_experts" not in meta


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "tiny", "prompt_token_ids": IDS}),
        ("/v1/chat/completions", {"model": "tiny", "prompt_token_ids": IDS, "messages": [], "stream": True}),
        ("/generate", {"input_ids": IDS}),
    ],
)
def test_a_dense_model_answers_400_naming_the_field(served, path, body):
    dense = served.fresh_backend()
    code, _, answer = served.post(path, {**body, "return_routed_experts": True})
    assert (code, answer["error"]["param"], answer["error"]["code"]) == (
        400,
        "return_routed_experts",
        "invalid_argument",
    ), answer
    assert "dense" in answer["error"]["message"] and len(dense.requests) == 1
    assert served.post(path, body)[0] == 200  # the next request is served


def test_messages_refuses_the_flag(served, moe):
    body = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    code, _, answer = served.post("/v1/messages", {**body, "return_routed_experts": True})
    assert code == 400 and "return_routed_experts" in answer["error"]["message"]
    assert moe.requests == []
