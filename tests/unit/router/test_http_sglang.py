"""SGLang's routes on a scripted router: POST /generate (token ids in, ids, text and logprobs out,
meta_info with finish_reason and weight_version), GET /get_weight_version, and the refusals of
POST /update_weights_from_disk: without the admin token, and when the router has no Admin service
it can reach (the rollouts themselves: tests/integration/router/test_http_sglang_rollouts.py)."""

from __future__ import annotations

import json

import pytest
from http_kit import EOT, REPLY, VERSION, ByteCodec, ScriptedBackend, ServedFront, logprob, serve

from epochserve.net import free_port
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.proto.v1 import common_pb2
from epochserve.router.errors import NoWorkerError
from epochserve.router.httpfront import run
from epochserve.router.httpfront.front import AdminAccess, Front
from epochserve.router.httpfront.sglang_shapes import UpdateWeightsBody
from epochserve.router.httpfront.weights import rollout_request

KEY = "sekrit-key"
ADMIN = "admin-sekrit"
IDS = [*REPLY.encode(), EOT]


@pytest.fixture(scope="module")
def served():
    yield from serve()


@pytest.fixture
def backend(served):
    return served.fresh_backend()


def generate(served, **body) -> dict:
    code, _, answer = served.post("/generate", body)
    assert code == 200, answer
    return answer


def test_token_ids_in_ids_text_and_logprobs_out(served, backend):
    out = generate(
        served, input_ids=[5, 6, 7], sampling_params={"temperature": 0, "top_k": -1}, return_logprob=True
    )
    assert (out["text"], out["output_ids"]) == (REPLY, IDS)
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "stop", "matched": EOT}  # the end of turn
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (3, len(IDS))
    assert (meta["weight_version"], meta["policy_version"], meta["id"]) == (
        str(VERSION),
        VERSION,
        backend.requests[0].request_id,
    )
    assert meta["output_token_logprobs"] == [
        [pytest.approx(logprob(0, p)), t, None] for p, t in enumerate(IDS)
    ]
    (request,) = backend.requests
    assert list(request.prompt_token_ids) == [5, 6, 7] and request.output_mode == common_pb2.OUTPUT_MODE_FINAL
    assert (request.sampling.temperature, request.sampling.top_k, request.sampling.max_tokens) == (0, 0, 128)


def test_sampling_params_reach_the_request(served, backend):
    sampling = {"max_new_tokens": 300, "top_p": 0.5, "top_k": 4, "min_p": 0.1, "n": 2, "sampling_seed": 9,
                "stop_token_ids": [3], "ignore_eos": True, "skip_special_tokens": True}  # fmt: skip
    outs = generate(
        served,
        text="hi",
        sampling_params=sampling,
        top_logprobs_num=2,
        return_logprob=True,
        min_policy_version=6,
    )
    assert [o["index"] for o in outs] == [0, 1] and all(o["text"] == REPLY for o in outs)
    assert outs[1]["meta_info"]["output_top_logprobs"][0] == [[-0.5, 101, None], [-1.5, 102, None]]
    (request,) = backend.requests
    s = request.sampling
    assert list(request.prompt_token_ids) == list(b"hi") and (request.n, request.min_policy_version) == (2, 6)
    assert (s.max_tokens, s.top_k, s.seed, list(s.stop_token_ids), s.ignore_eos, s.num_top_logprobs) == (
        300,
        4,
        9,
        [3],
        True,
        2,
    )
    assert (round(s.top_p, 6), round(s.min_p, 6)) == (0.5, 0.1)


def test_length_and_stop_strings_finish_as_sglang_says(served, backend):
    short = generate(served, input_ids=[1], sampling_params={"max_new_tokens": 4})
    assert (short["output_ids"], short["meta_info"]["finish_reason"]) == (
        IDS[:4],
        {"type": "length", "length": 4},
    )
    cut = generate(served, input_ids=[1], sampling_params={"stop": ["zzz", "STOP"]})
    assert (cut["text"], cut["meta_info"]["finish_reason"]) == (
        REPLY[: REPLY.index("STOP")],
        {"type": "stop", "matched": "STOP"},
    )
    assert backend.aborted  # the worker stopped once the stop string matched


def test_a_stream_sends_text_so_far_and_each_pieces_ids(served, monkeypatch):
    monkeypatch.setattr(run, "_MAX_COALESCING_TURNS", 0)  # only what is queued at a wake-up: more events
    whole = generate(served, input_ids=[1], return_logprob=True)
    code, headers, text = served.post("/generate", {"input_ids": [1], "return_logprob": True, "stream": True})
    assert (code, headers.get_content_type()) == (200, "text/event-stream")
    lines = [line.removeprefix("data: ") for line in text.strip().split("\n\n")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    assert len(events) > 2 and events[-1]["text"] == whole["text"]
    assert all(REPLY.startswith(e["text"]) for e in events)  # text so far, never half a character
    assert [t for e in events for t in e["output_ids"]] == whole["output_ids"]
    logprobs = [x for e in events for x in e["meta_info"]["output_token_logprobs"]]
    assert logprobs == whole["meta_info"]["output_token_logprobs"]
    assert [e["meta_info"]["finish_reason"] for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1]["meta_info"]["finish_reason"] == whole["meta_info"]["finish_reason"]
    assert all(e["meta_info"]["weight_version"] == str(VERSION) for e in events)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input_ids": [1], "sampling_params": {"temperature": -1}}, "sampling_params.temperature"),
        ({"input_ids": [1], "sampling_params": {"top_k": -2}}, "sampling_params.top_k"),
        ({"input_ids": [1], "sampling_params": {"max_new_tokens": -1}}, "sampling_params.max_new_tokens"),
        ({"input_ids": [1], "sampling_params": {"n": 0}}, "sampling_params.n"),
        (
            {"input_ids": [1], "sampling_params": {"repetition_penalty": 1.2}},
            "sampling_params.repetition_penalty",
        ),
        (
            {"input_ids": [1], "sampling_params": {"presence_penalty": 0.5}},
            "sampling_params.presence_penalty",
        ),
        ({"input_ids": [1], "sampling_params": {"regex": "a+"}}, "sampling_params.regex"),
        ({"input_ids": [[1], [2]]}, "input_ids"),
        ({"input_ids": [300]}, "input_ids"),
        ({"text": ["a", "b"]}, "text"),
        ({}, "text"),
    ],
)
def test_bad_requests_get_400_naming_sglangs_field(served, backend, body, param):
    code, _, answer = served.post("/generate", body)
    assert (code, answer["error"]["param"]) == (400, param), answer
    assert backend.requests == []
    assert generate(served, input_ids=[1], sampling_params={"max_new_tokens": 2})["output_ids"] == IDS[:2]


def test_router_errors_keep_their_status(served, backend):
    backend.fail_with = NoWorkerError("request r: no worker serving policy version 7")
    code, _, answer = served.post("/generate", {"input_ids": [1]})
    assert (code, answer["error"]["message"]) == (503, str(backend.fail_with))


def test_get_weight_version_is_the_policy_version(served, backend):
    assert served.get("/get_weight_version")[::2] == (
        200,
        {"weight_version": str(VERSION), "policy_version": VERSION},
    )
    backend.version = None
    assert served.get("/get_weight_version")[0] == 503


def test_update_weights_without_admin_is_503_and_says_why(served):
    code, _, answer = served.post("/update_weights_from_disk", {"model_path": "/ckpt/v8"})
    assert (code, answer["success"]) == (503, False)
    assert "--admin-address" in answer["message"] and answer["error"]["code"] == "unavailable"


def test_update_weights_with_an_unreachable_admin_is_503_and_bad_fields_are_400():
    served = ServedFront(ScriptedBackend(), admin=AdminAccess(f"127.0.0.1:{free_port()}", ADMIN), api_key=KEY)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        for body, param in (
            ({"model_path": "ckpt/v8"}, "model_path"),
            ({"model_path": "/ckpt/v8", "weight_version": "v8"}, "weight_version"),
            ({"model_path": "/ckpt/v8", "drain": "later"}, "drain"),
            ({"model_path": "/ckpt/v8", "drain_deadline": -1}, "drain_deadline"),
            ({"model_path": "/ckpt/v8", "drain_deadline": float("inf")}, "drain_deadline"),
            ({"model_path": "/ckpt/v8", "drain_deadline": "soon"}, "drain_deadline"),
            ({}, "model_path"),
        ):
            code, _, answer = served.post("/update_weights_from_disk", body, auth)
            assert (code, answer["success"], answer["error"]["param"]) == (400, False, param), answer
        code, _, answer = served.post(
            "/update_weights_from_disk", {"model_path": "/ckpt/v8", "timeout": 5}, auth
        )
        assert (code, answer["success"]) == (503, False) and "cannot be reached" in answer["message"]
    finally:
        served.close()


@pytest.mark.parametrize(
    ("fields", "drain", "deadline"),
    [
        ({}, pb.DRAIN_POLICY_OVERLAP, None),
        ({"abort_all_requests": True}, pb.DRAIN_POLICY_ABORT, None),
        ({"drain": "finish", "drain_deadline": 30.5}, pb.DRAIN_POLICY_FINISH, 30.5),
        ({"drain": "finish", "abort_all_requests": True, "drain_deadline": 0}, pb.DRAIN_POLICY_FINISH, 0.0),
    ],
)
def test_update_weights_drain_and_deadline_reach_the_admin_request(fields, drain, deadline):
    front = Front(ScriptedBackend(), ByteCodec(), "tiny")  # type: ignore[arg-type]
    request = rollout_request(front, UpdateWeightsBody(model_path="/ckpt/v8", **fields))
    assert (request.version, request.source, request.drain) == (VERSION + 1, "/ckpt/v8", drain)
    has_deadline = request.HasField("drain_deadline_seconds")
    assert (request.drain_deadline_seconds if has_deadline else None) == deadline


@pytest.mark.parametrize("api_key", [None, KEY], ids=["no-api-key", "api-key"])
def test_update_weights_takes_the_admin_token_and_nothing_else(api_key):
    """Without the admin token the route answers 401 before it reads the body (a malformed one is
    400 only with the token), with or without an API key; the API key does not open it, and the
    admin token does not open the other routes."""
    served = ServedFront(
        ScriptedBackend(), admin=AdminAccess(f"127.0.0.1:{free_port()}", ADMIN), api_key=api_key
    )
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}"},
                        {"Authorization": f"Basic {ADMIN}"}, {"x-api-key": ADMIN}):  # fmt: skip
            code, got, answer = served.post("/update_weights_from_disk", b"{not json", headers)
            assert (code, answer["success"], answer["error"]["code"]) == (401, False, "invalid_admin_token")
            assert "admin token" in answer["message"] and got["WWW-Authenticate"] == "Bearer"
        code, _, answer = served.post(
            "/update_weights_from_disk", b"{not json", {"Authorization": f"Bearer {ADMIN}"}
        )
        assert (code, answer["error"]["code"]) == (400, "invalid_json")  # through to the route
        # The admin token is no API key: other routes still take the API key only.
        code, _, _ = served.post("/generate", {"input_ids": [5]}, {"Authorization": f"Bearer {ADMIN}"})
        assert code == (200 if api_key is None else 401)
        assert served.get("/get_weight_version", {"Authorization": f"Bearer {KEY}"})[0] == 200
    finally:
        served.close()
