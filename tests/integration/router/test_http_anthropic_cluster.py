"""POST /v1/messages end to end (real etcd, coordinator, one SmolLM2 worker on CPU fp32, a router with
the HTTP front) through the official anthropic client: at temperature 0 a message is the chat
completion of the same conversation (same template, same prompt ids, same text), whole and
streamed; stop sequences; bad requests get their 4xx and the next good request succeeds."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anthropic
import openai
import pytest
from http_clusters import front_url, http_cluster

SYSTEM = "You answer in one short sentence."
MESSAGES = [{"role": "user", "content": "Name three colors."}]
NEW_TOKENS = 12
GREEDY = {"temperature": 0}  # anthropic 2.17's create() takes sampling fields only in the body


@pytest.fixture(scope="module")
def root_url(smollm2_dir, tmp_path_factory):
    with http_cluster(tmp_path_factory.mktemp("anthropic"), smollm2_dir) as cluster:
        yield front_url(cluster)


@pytest.fixture(scope="module")
def client(root_url) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=root_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def chat_reference(root_url, smollm2_dir):
    """The chat completion of the same conversation, at temperature 0."""
    openai_client = openai.OpenAI(base_url=f"{root_url}/v1", api_key="unused", max_retries=0, timeout=120)
    return openai_client.chat.completions.create(
        model=smollm2_dir.name,
        messages=[{"role": "system", "content": SYSTEM}, *MESSAGES],
        max_tokens=NEW_TOKENS,
        temperature=0,
    )


def test_a_message_equals_the_chat_completion_whole_and_streamed(client, chat_reference, smollm2_dir):
    fields = dict(model=smollm2_dir.name, max_tokens=NEW_TOKENS, system=SYSTEM, messages=MESSAGES)
    done = client.messages.create(**fields, extra_body=GREEDY)
    reference = chat_reference.choices[0]
    assert done.content[0].text == reference.message.content and done.content[0].text
    assert done.prompt_token_ids == chat_reference.prompt_token_ids  # type: ignore[attr-defined]
    assert done.token_ids == reference.token_ids  # type: ignore[attr-defined]
    assert done.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[reference.finish_reason]
    assert done.usage.output_tokens == chat_reference.usage.completion_tokens
    assert done.policy_version == 0  # type: ignore[attr-defined]

    events = list(client.messages.create(**fields, extra_body=GREEDY, stream=True))
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == done.content[0].text
    assert (events[-2].type, events[-2].delta.stop_reason) == ("message_delta", done.stop_reason)
    with client.messages.stream(**fields, extra_body=GREEDY) as stream:  # the client's own helper
        assert stream.get_final_message().content[0].text == done.content[0].text


def test_a_stop_sequence_cuts_the_text_before_it(client, chat_reference, smollm2_dir):
    full = chat_reference.choices[0].message.content
    stop = full.strip().split(" ")[1]  # a word inside the greedy text
    cut = client.messages.create(
        model=smollm2_dir.name, max_tokens=NEW_TOKENS, system=SYSTEM, messages=MESSAGES,
        stop_sequences=[stop], extra_body=GREEDY,
    )  # fmt: skip
    assert (cut.content[0].text, cut.stop_reason, cut.stop_sequence) == (
        full[: full.index(stop)], "stop_sequence", stop,
    )  # fmt: skip


def test_bad_requests_get_their_4xx_and_the_next_good_request_succeeds(client, root_url, smollm2_dir):
    good = dict(model=smollm2_dir.name, max_tokens=2, messages=MESSAGES)
    for error, fields in (
        (anthropic.BadRequestError, {"extra_body": {"temperature": -0.5}}),
        (anthropic.BadRequestError, {"max_tokens": 10**9}),
        (anthropic.NotFoundError, {"model": "claude-no-such-model"}),
    ):
        with pytest.raises(error) as refused:
            client.messages.create(**{**good, **fields})
        assert refused.value.body["type"] == "error"  # type: ignore[index]
        assert client.messages.create(**good).content[0].text
    body = json.dumps({"model": smollm2_dir.name, "messages": MESSAGES}).encode()  # no max_tokens
    request = urllib.request.Request(
        f"{root_url}/v1/messages", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    answer = json.loads(refused.value.read())
    assert refused.value.code == 400 and answer["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in answer["error"]["message"]
    assert client.messages.create(**good).content[0].text
