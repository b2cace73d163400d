"""SGLang's RL routes end to end on an `epochctl up`-style local cluster (real etcd, coordinator, a
tiny Llama worker, a router with the HTTP front and the Admin address): POST /update_weights_from_disk
rolls a published checkpoint out until DONE, after which GET /get_weight_version and every /generate
response name the new version, and the logprobs are those of the new weights (transformers on the
same checkpoint); a rollout that cannot stage ends ABORTED with its reason and changes nothing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch
from fixtures.engine import hf_next_token_logits
from http_clusters import front_url, http_cluster
from routerkit import PROMPT

from epochserve.client.publisher import PolicyPublisher

NEW_TOKENS = 6


@pytest.fixture(scope="module")
def root_url(versions, tmp_path_factory):
    with http_cluster(tmp_path_factory.mktemp("sglang"), versions[0]) as cluster:
        yield front_url(cluster)


def call(root_url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{root_url}{path}", data=data, headers={"Content-Type": "application/json"}
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
def assert_logprobs_are_of(model, out: dict) -> None:
    """At temperature 0 the logprobs are the full temperature-1 distribution's (nothing cut)."""
    generated = out["output_ids"]
    assert [t for _, t, _ in out["meta_info"]["output_token_logprobs"]] == generated
    expected = torch.log_softmax(hf_next_token_logits(model, PROMPT, generated), dim=-1)
    expected = expected.gather(1, torch.tensor(generated)[:, None])[:, 0]
    got = torch.tensor([lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]])
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got, expected)


def checkpoint(versions, version: int, tmp_path) -> str:
    a_dir, models, _ = versions
    path = tmp_path / f"sglang-v{version}"
    PolicyPublisher.save_checkpoint(version, models[version].state_dict(), path, config_from=a_dir)
    return str(path)


def test_update_weights_from_disk_rolls_out_and_generate_follows(root_url, versions, tmp_path):
    _, models, _ = versions
    before = generate(root_url)
    assert (before["meta_info"]["weight_version"], len(before["output_ids"])) == ("0", NEW_TOKENS)
    assert_logprobs_are_of(models[0], before)

    body = {"model_path": checkpoint(versions, 1, tmp_path), "version": 1, "drain": "finish"}
    done = {"success": True, "message": "policy version 1 is served by every worker", "weight_version": "1"}
    assert call(root_url, "/update_weights_from_disk", body) == (200, done)
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
    code, answer = call(root_url, "/update_weights_from_disk", body)
    assert (code, answer["success"], answer["weight_version"]) == (200, True, "2")
    assert_logprobs_are_of(models[2], generate(root_url))


def test_a_rollout_that_cannot_stage_is_aborted_and_changes_nothing(root_url, tmp_path):
    _, current = call(root_url, "/get_weight_version")
    version = current["policy_version"] + 1
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    code, answer = call(root_url, "/update_weights_from_disk", {"model_path": str(empty), "version": version})
    assert (code, answer["success"], answer["weight_version"]) == (400, False, current["weight_version"]), (
        answer
    )
    assert f"rollout of policy version {version} aborted" in answer["message"]
    assert call(root_url, "/get_weight_version") == (200, current)
    assert generate(root_url)["meta_info"]["weight_version"] == current["weight_version"]
    # That version was tried: the coordinator refuses it again, the refusal is the client's 4xx.
    code, answer = call(root_url, "/update_weights_from_disk", {"model_path": str(empty), "version": version})
    assert 400 <= code < 500 and answer["success"] is False, answer
