"""Rollouts through the HTTP front, on an `epochctl up`-style local cluster (real etcd, coordinator, a
tiny Llama worker, a router with the HTTP front and the Admin address). SGLang's RL routes: POST
/update_weights_from_disk takes the admin token only, rolls a published checkpoint out until DONE,
after which GET /get_weight_version and every /generate response name the new version, and the
logprobs are those of the new weights (transformers on the same checkpoint); a rollout that cannot
stage ends ABORTED with its reason and changes nothing. And 64 concurrent chats (the official async
openai client, half streamed) through a rollout: each response, every chunk of a stream, names one
version, and its logprobs are that version's weights'. The tests share one cluster and run in file
order: each rolls out the version after the current one."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import openai
import pytest
import torch
from fixtures.engine import hf_next_token_logits
from http_clusters import front_url, http_cluster
from routerkit import PROMPT

from epochserve.app.local.cluster import LocalCluster
from epochserve.client.publisher import PolicyPublisher
from epochserve.controlplane.admin.client import AdminClient
from epochserve.proto.v1 import admin_pb2 as pb

NEW_TOKENS = 6
NUM_CHATS = 64
CHAT_TOKENS = 4  # short: 2 CPU cores serve every chat


@pytest.fixture(scope="module")
def cluster(versions, tmp_path_factory):
    with http_cluster(tmp_path_factory.mktemp("sglang"), versions[0]) as running:
        yield running


@pytest.fixture(scope="module")
def root_url(cluster):
    return front_url(cluster)


@pytest.fixture(scope="module")
def admin(cluster) -> dict[str, str]:
    """The header that opens the rollout route: the cluster's admin token, which the router holds."""
    return {"Authorization": f"Bearer {cluster.token}"}


def call(root_url: str, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{root_url}{path}", data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def generate(root_url: str) -> dict:
    sampling = {"max_new_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    code, out = call(
        root_url, "/generate", {"input_ids": PROMPT, "sampling_params": sampling, "return_logprob": True}
    )
    assert code == 200, out
    return out


@torch.no_grad()
def logprobs_of(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """`model`'s logprob of each generated token; at temperature 0 the full temperature-1
    distribution's (nothing cut)."""
    expected = torch.log_softmax(hf_next_token_logits(model, prompt, generated), dim=-1)
    return expected.gather(1, torch.tensor(generated)[:, None])[:, 0]


def assert_logprobs_are_of(model, out: dict) -> None:
    generated = out["output_ids"]
    assert [t for _, t, _ in out["meta_info"]["output_token_logprobs"]] == generated
    got = torch.tensor([lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]])
    expected = logprobs_of(model, PROMPT, generated)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got, expected)


def checkpoint(versions, version: int, tmp_path) -> str:
    a_dir, models, _ = versions
    path = tmp_path / f"sglang-v{version}"
    PolicyPublisher.save_checkpoint(version, models[version].state_dict(), path, config_from=a_dir)
    return str(path)


def test_update_weights_without_the_admin_token_is_401_and_starts_no_rollout(
    cluster, root_url, versions, tmp_path
):
    body = {"model_path": checkpoint(versions, 1, tmp_path), "version": 1}
    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        code, answer = call(root_url, "/update_weights_from_disk", body, headers)
        assert (code, answer["success"], answer["error"]["code"]) == (401, False, "invalid_admin_token")
    assert call(root_url, "/get_weight_version") == (200, {"weight_version": "0", "policy_version": 0})
    assert not asyncio.run(list_rollouts(cluster)).rollouts


async def list_rollouts(cluster: LocalCluster):
    async with AdminClient(cluster.admin_address, cluster.token) as client:
        return await client.list_rollouts(None, 10)


def test_update_weights_from_disk_rolls_out_and_generate_follows(
    cluster, root_url, admin, versions, tmp_path
):
    _, models, _ = versions
    before = generate(root_url)
    assert (before["meta_info"]["weight_version"], len(before["output_ids"])) == ("0", NEW_TOKENS)
    assert_logprobs_are_of(models[0], before)

    body = {"model_path": checkpoint(versions, 1, tmp_path), "version": 1, "drain": "overlap",
            "drain_deadline": 120}  # fmt: skip
    done = {"success": True, "message": "policy version 1 is served by every worker", "weight_version": "1"}
    assert call(root_url, "/update_weights_from_disk", body, admin) == (200, done)
    (record,) = [r for r in asyncio.run(list_rollouts(cluster)).rollouts if r.version == 1]
    assert (record.drain, record.drain_deadline_seconds) == (pb.DRAIN_POLICY_OVERLAP, 120)
    assert call(root_url, "/get_weight_version") == (200, {"weight_version": "1", "policy_version": 1})
    after = generate(root_url)
    assert after["meta_info"]["weight_version"] == "1" and after["meta_info"]["policy_version"] == 1
    assert_logprobs_are_of(models[1], after)

    # SGLang's own field names: the version as weight_version, abort_all_requests for drain=abort.
    body = {
        "model_path": checkpoint(versions, 2, tmp_path),
        "weight_version": "2",
        "abort_all_requests": True,
    }
    code, answer = call(root_url, "/update_weights_from_disk", body, admin)
    assert (code, answer["success"], answer["weight_version"]) == (200, True, "2")
    assert_logprobs_are_of(models[2], generate(root_url))


@dataclass
class Answer:
    """One chat's response, as the client saw it."""

    versions: set[int]  # every policy_version it named: the response's, or each streamed chunk's
    prompt: list[int]
    token_ids: list[int]
    logprobs: list[float]
    is_after_done: bool  # sent after the rollout was DONE


async def ask(client: openai.AsyncOpenAI, model: str, index: int, is_after_done: bool) -> Answer:
    """A greedy chat (streamed for odd `index`) on token ids: the tiny model has no tokenizer."""
    prompt = PROMPT[: 3 + index % 8]
    fields = dict(
        model=model, messages=[{"role": "user", "content": "(prompt_token_ids)"}], max_tokens=CHAT_TOKENS,
        temperature=0, logprobs=True, extra_body={"prompt_token_ids": prompt, "ignore_eos": True},
    )  # fmt: skip
    if index % 2 == 0:
        done = await client.chat.completions.create(**fields)
        choice = done.choices[0]
        logprobs = [t.logprob for t in choice.logprobs.content]
        return Answer({done.policy_version}, prompt, choice.token_ids, logprobs, is_after_done)  # type: ignore[attr-defined]
    answer = Answer(set(), prompt, [], [], is_after_done)
    async for chunk in await client.chat.completions.create(**fields, stream=True):
        answer.versions.add(chunk.policy_version)  # type: ignore[attr-defined]
        for choice in chunk.choices:
            answer.token_ids += choice.token_ids  # type: ignore[attr-defined]
            answer.logprobs += [t.logprob for t in choice.logprobs.content] if choice.logprobs else []
    return answer


async def chats_during(rollout: Callable[[], tuple[int, dict]], root_url: str) -> tuple[list[Answer], tuple]:
    """NUM_CHATS tasks each keep one chat in flight until the rollout is DONE, then send one more."""
    client = openai.AsyncOpenAI(base_url=f"{root_url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = (await client.models.list()).data[0].id
    is_done = asyncio.Event()

    async def keep_chatting(index: int) -> list[Answer]:
        answers: list[Answer] = []
        while not answers or not answers[-1].is_after_done:
            answers.append(await ask(client, model, index, is_done.is_set()))
        return answers

    async def roll_out() -> tuple[int, dict]:
        await asyncio.sleep(0.5)  # every task has a chat in flight
        outcome = await asyncio.to_thread(rollout)
        is_done.set()
        return outcome

    outcome, *answers = await asyncio.gather(roll_out(), *(keep_chatting(i) for i in range(NUM_CHATS)))
    await client.close()
    return [a for task in answers for a in task], outcome


def test_64_concurrent_chats_through_a_rollout_each_name_one_version(root_url, admin, versions, tmp_path):
    _, models, _ = versions
    current = call(root_url, "/get_weight_version")[1]["policy_version"]
    version = current + 1
    assert version in models, "runs before the module's aborted rollout (file order)"
    body = {"model_path": checkpoint(versions, version, tmp_path), "version": version, "drain": "finish"}

    answers, outcome = asyncio.run(
        chats_during(lambda: call(root_url, "/update_weights_from_disk", body, admin), root_url)
    )
    assert outcome[0] == 200 and outcome[1]["success"], outcome
    assert all(len(a.token_ids) == CHAT_TOKENS for a in answers)
    assert all(len(a.versions) == 1 for a in answers), "a response (or a stream's chunks) named two versions"
    assert {v for a in answers for v in a.versions} == {current, version}
    assert all(a.versions == {version} for a in answers if a.is_after_done), "sent after DONE, ran before it"
    # The tokens are the named version's (I1), not only the label. Greedy answers repeat: one
    # forward of the reference per distinct output.
    by_output: dict[tuple, list[Answer]] = {}
    for a in answers:
        by_output.setdefault((*a.versions, tuple(a.prompt), tuple(a.token_ids)), []).append(a)
    for (named, prompt, token_ids), same in by_output.items():
        reference = logprobs_of(models[named], list(prompt), list(token_ids))
        for a in same:
            assert torch.allclose(torch.tensor(a.logprobs), reference, atol=1e-4, rtol=0), (named, a)


def test_a_rollout_that_cannot_stage_is_aborted_and_changes_nothing(root_url, admin, tmp_path):
    _, current = call(root_url, "/get_weight_version")
    version = current["policy_version"] + 1
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    code, answer = call(
        root_url, "/update_weights_from_disk", {"model_path": str(empty), "version": version}, admin
    )
    assert (code, answer["success"], answer["weight_version"]) == (400, False, current["weight_version"]), (
        answer
    )
    assert f"rollout of policy version {version} aborted" in answer["message"]
    assert call(root_url, "/get_weight_version") == (200, current)
    assert generate(root_url)["meta_info"]["weight_version"] == current["weight_version"]
    # That version was tried: the coordinator refuses it again, the refusal is the client's 4xx.
    code, answer = call(
        root_url, "/update_weights_from_disk", {"model_path": str(empty), "version": version}, admin
    )
    assert 400 <= code < 500 and answer["success"] is False, answer
