"""--http-processes 2 end to end: real etcd, coordinator, one SmolLM2 worker on CPU fp32, and two
routers side by side, one with the HTTP front in its own process (router-0) and one with it in two
processes of their own (router-1). The same requests through both give the same answers (greedy:
completions and chat, whole and streamed, through the openai client; the same 400 body; /health,
/v1/models, /metrics), both processes answer requests, and stopping the router leaves none of them
running. One cluster for the module; the last test stops router-1."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import openai
import pytest
from http_clusters import front_url, http_cluster
from routerkit import wait_until

PROCESS_HEADER = "x-epochserve-http-process"
MESSAGES = [{"role": "user", "content": "Name three colors."}]
PROMPT = "The capital of France is"
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def cluster(smollm2_dir, tmp_path_factory):
    with http_cluster(tmp_path_factory.mktemp("http-processes"), smollm2_dir) as running:
        running.add_router("--http-processes", "2")
        yield running


@pytest.fixture(scope="module")
def clients(cluster) -> tuple[openai.OpenAI, openai.OpenAI]:
    """(router-0's front, in its process; router-1's, in two processes)."""
    return tuple(
        openai.OpenAI(base_url=f"{front_url(cluster, i)}/v1", api_key="unused", max_retries=0, timeout=120)
        for i in (0, 1)
    )  # type: ignore[return-value]


def get(url: str, body: dict | None = None, raw: bytes | None = None) -> tuple[int, dict, str | None]:
    """(status, JSON body, the answering process's header), on a new connection; POST with a body."""
    data = raw if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers.get(PROCESS_HEADER)
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read()), refused.headers.get(PROCESS_HEADER)


def test_completions_and_chat_whole_and_streamed_are_the_same_through_either_front(clients, smollm2_dir):
    answers = []
    for client in clients:
        done = client.completions.create(
            model=smollm2_dir.name, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0
        )
        chat = client.chat.completions.create(
            model=smollm2_dir.name, messages=MESSAGES, max_completion_tokens=NEW_TOKENS, temperature=0
        )
        streamed_text, streamed_ids = "", []
        for chunk in client.chat.completions.create(
            model=smollm2_dir.name, messages=MESSAGES, max_tokens=NEW_TOKENS, temperature=0, stream=True
        ):
            for choice in chunk.choices:
                streamed_text += choice.delta.content or ""
                streamed_ids += choice.token_ids  # type: ignore[attr-defined]
        streamed_completion = "".join(
            chunk.choices[0].text
            for chunk in client.completions.create(
                model=smollm2_dir.name, prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0, stream=True
            )
            if chunk.choices
        )
        answers.append(
            (
                done.choices[0].text, done.choices[0].token_ids, done.policy_version,  # type: ignore[attr-defined]
                chat.choices[0].message.content, chat.choices[0].token_ids,  # type: ignore[attr-defined]
                streamed_text, streamed_ids, streamed_completion,
            )
        )  # fmt: skip
    in_process, in_processes = answers
    assert in_processes == in_process
    assert in_process[0] and in_process[0] == in_process[7] and in_process[3] == in_process[5]


def test_a_bad_request_gets_the_same_400_body(cluster, smollm2_dir):
    bad = {"model": smollm2_dir.name, "prompt": PROMPT, "max_tokens": 2, "temperature": -0.5}
    (status, body, header), (status_n, body_n, header_n) = (
        get(f"{front_url(cluster, i)}/v1/completions", bad) for i in (0, 1)
    )
    assert (status_n, body_n) == (status, body) and status == 400
    assert body["error"]["param"] == "temperature"
    assert header is None and header_n is not None  # the header only where there are processes
    malformed = [get(f"{front_url(cluster, i)}/v1/completions", raw=b'{"model": ')[:2] for i in (0, 1)]
    assert malformed[1] == malformed[0] and malformed[0][1]["error"]["code"] == "invalid_json"


def test_health_models_and_metrics_answer_as_the_routers_own_front(cluster, smollm2_dir):
    for path in ("/health", "/v1/models"):
        assert get(front_url(cluster, 1) + path)[:2] == get(front_url(cluster, 0) + path)[:2]
    status, models, _ = get(front_url(cluster, 1) + "/v1/models")
    assert status == 200 and models["data"][0]["id"] == smollm2_dir.name
    assert models["data"][0]["max_model_len"] > 0  # the limits came over GetPolicy
    metrics = urllib.request.urlopen(front_url(cluster, 1) + "/metrics", timeout=30).read().decode()
    assert 'epochserve_router_requests_total{status="OK",version="0"}' in metrics  # the router's registry


def test_both_processes_answer_requests(cluster, smollm2_dir):
    seen: dict[str, int] = {}
    request = {"model": smollm2_dir.name, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    for _ in range(40):
        status, _, pid = get(f"{front_url(cluster, 1)}/v1/completions", request)
        assert status == 200 and pid is not None
        seen[pid] = seen.get(pid, 0) + 1
        if len(seen) == 2:
            break
    assert len(seen) == 2, f"one process answered every request: {seen}"
    assert str(cluster.routers[1].pid) not in seen  # not the router's own


def test_stopping_the_router_stops_every_front_process(cluster, smollm2_dir):
    """Last in the module: stops router-1."""
    pids = set()
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(int(get(front_url(cluster, 1) + "/health")[2] or 0))
    assert len(pids) == 2 and 0 not in pids
    assert cluster.routers[1].stop(timeout=60) == 0
    wait_until(lambda: not any(_is_running(pid) for pid in pids), 10, "the HTTP front processes to exit")
    assert get(front_url(cluster, 0) + "/health")[0] == 200  # the other router's front is untouched


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone too: it only waits to be reaped
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
