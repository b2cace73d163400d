"""A /v1/messages stream writes what it has at hand together, as the OpenAI routes do: a delta
carries every token that arrived together (router/httpfront/run.py), the opening events go out in
the write of the first delta and the closing ones in the write of whatever ended the sample (the
delta that matched a stop sequence, or that came with the worker's finish), so there is one write
per wake-up; the deltas still add up to the message sent whole."""

from __future__ import annotations

import asyncio
import json

import pytest
from http_kit import CHUNK, REPLY, ByteCodec, ScriptedBackend

from epochserve.router.httpfront import messages, run
from epochserve.router.httpfront.anthropic_shapes import MessagesRequest
from epochserve.router.httpfront.front import Front

NUM_TOKENS = len(REPLY.encode()) + 1  # the reply and the end of turn
NUM_CHUNKS = -(-NUM_TOKENS // CHUNK)  # messages the scripted worker sends
OPENING = ["message_start", "content_block_start"]
CLOSING = ["content_block_stop", "message_delta", "message_stop"]


def written(body: dict) -> list[list[dict]]:
    """The events of each write of the response's body (one list per write)."""

    async def run_it() -> list[str]:
        front = Front(ScriptedBackend(), ByteCodec(), "tiny")  # type: ignore[arg-type]
        response = await messages.create(front, MessagesRequest(**body))
        assert not isinstance(response, dict)
        return [part async for part in response.body_iterator]  # type: ignore[misc]

    writes = asyncio.run(run_it())
    return [[json.loads(block.split("\ndata: ", 1)[1]) for block in w.strip().split("\n\n")] for w in writes]


def body(**fields) -> dict:
    messages_ = [{"role": "user", "content": "hi"}]
    return {"model": "tiny", "max_tokens": 100, "messages": messages_, "stream": True, **fields}


@pytest.mark.parametrize("turns", [0, run._MAX_COALESCING_TURNS])
def test_events_at_hand_are_written_together_and_add_up_to_the_whole(monkeypatch, turns):
    monkeypatch.setattr(run, "_MAX_COALESCING_TURNS", turns)
    writes = written(body())
    kinds = [[e["type"] for e in w] for w in writes]
    assert all(k.count("content_block_delta") <= 1 for k in kinds)  # a delta per write at most
    assert kinds[0] == [*OPENING, "content_block_delta"]
    assert all(k == ["content_block_delta"] for k in kinds[1:-1])
    if turns:  # the worker's finish came with the last chunks: in the last delta's write
        assert kinds[-1] == ["content_block_delta", *CLOSING]
    else:  # the finish came on its own (a message without tokens): a write of its own
        assert kinds[-1] == CLOSING
    events = [e for w in writes for e in w]
    deltas = [e for e in events if e["type"] == "content_block_delta"]
    assert "".join(d["delta"]["text"] for d in deltas) == REPLY
    assert len([t for d in deltas for t in d["token_ids"]]) == NUM_TOKENS
    assert events[-2]["delta"]["stop_reason"] == "end_turn"
    assert events[-2]["usage"]["output_tokens"] == NUM_TOKENS
    if turns:  # the scripted worker has a chunk ready at every turn: deltas carry several
        assert len(deltas) < NUM_CHUNKS
    else:
        assert len(deltas) == NUM_CHUNKS


def test_the_closing_events_go_out_with_the_delta_that_matched_a_stop_sequence(monkeypatch):
    monkeypatch.setattr(run, "_MAX_COALESCING_TURNS", 0)
    writes = written(body(stop_sequences=["STOP"]))
    kinds = [e["type"] for e in writes[-1]]
    assert kinds == ["content_block_delta", *CLOSING]
    assert (writes[-1][-2]["delta"]["stop_reason"], writes[-1][-2]["delta"]["stop_sequence"]) == (
        "stop_sequence",
        "STOP",
    )
    text = "".join(e["delta"]["text"] for w in writes for e in w if e["type"] == "content_block_delta")
    assert text == REPLY[: REPLY.index("STOP")]
