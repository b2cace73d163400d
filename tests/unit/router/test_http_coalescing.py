"""A stream's tokens that arrive together go out together (router/httpfront/run.py): on a router
whose producers are busy, each SSE event carries several of the worker's chunks, one event per
choice, and the events still add up to exactly the response sent whole."""

from __future__ import annotations

import json

import pytest
from http_kit import CHUNK, REPLY, serve

from epochserve.router.httpfront import run

NUM_TOKENS = len(REPLY.encode()) + 1  # the reply and the end of turn
NUM_CHUNKS = -(-NUM_TOKENS // CHUNK)  # messages the scripted worker sends per sample


@pytest.fixture(scope="module")
def served():
    yield from serve()


def stream(served, body: dict) -> list[dict]:
    code, _, text = served.post("/v1/completions", {**body, "stream": True})
    assert code == 200, text
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


@pytest.mark.parametrize("turns", [0, run._MAX_COALESCING_TURNS])
def test_events_coalesce_chunks_and_add_up_to_the_whole(served, monkeypatch, turns):
    monkeypatch.setattr(run, "_MAX_COALESCING_TURNS", turns)
    served.fresh_backend()
    body = {"model": "tiny", "prompt_token_ids": [1], "max_tokens": 64, "n": 2, "logprobs": 0}
    code, _, whole = served.post("/v1/completions", body)
    assert code == 200, whole
    events = stream(served, body)
    choices = [c for e in events for c in e["choices"]]
    assert all(len(e["choices"]) == 1 for e in events)  # one event per choice
    for index in (0, 1):
        parts = [c for c in choices if c["index"] == index]
        assert "".join(c["text"] for c in parts) == whole["choices"][index]["text"] == REPLY
        assert [t for c in parts for t in c["token_ids"]] == whole["choices"][index]["token_ids"]
        assert [x for c in parts for x in c["logprobs"]["token_logprobs"]] == (
            whole["choices"][index]["logprobs"]["token_logprobs"]
        )
        if turns:  # the scripted worker has a chunk ready at every turn: events carry several
            assert len([c for c in parts if c["token_ids"]]) < NUM_CHUNKS
