"""Every bad input of docs/design.md §6 is refused with an InvalidRequestError naming its field."""

import math

import pytest

from epochserve.errors import InvalidRequestError
from epochserve.proto.convert import (
    OutputMode,
    parse_generate_request,
    sampling_from_proto,
    sampling_to_proto,
)
from epochserve.proto.v1 import common_pb2
from epochserve.sampling import ModelLimits, SamplingParams

LIMITS = ModelLimits(vocab_size=100, max_model_len=64, max_n=8)


def request(**fields):
    sampling = fields.pop("sampling", {})
    return common_pb2.GenerateRequest(
        request_id="r", prompt_token_ids=fields.pop("prompt", [1, 2, 3]), sampling=sampling, **fields
    )


@pytest.mark.parametrize(
    ("req", "field"),
    [
        (request(prompt=[1, 100]), "prompt_token_ids"),
        (request(prompt=[]), "prompt_token_ids"),
        (request(prompt=[1] * 64), "prompt_token_ids"),
        (request(sampling={"max_tokens": 62}), "sampling.max_tokens"),
        (request(sampling={"temperature": math.nan}), "sampling.temperature"),
        (request(sampling={"temperature": -0.5}), "sampling.temperature"),
        (request(sampling={"temperature": math.inf}), "sampling.temperature"),
        (request(sampling={"top_p": 0.0}), "sampling.top_p"),
        (request(sampling={"top_p": 1.5}), "sampling.top_p"),
        (request(sampling={"top_k": -1}), "sampling.top_k"),
        (request(sampling={"min_p": -0.1}), "sampling.min_p"),
        (request(sampling={"min_p": 1.1}), "sampling.min_p"),
        (request(sampling={"stop_token_ids": [100]}), "sampling.stop_token_ids"),
        (request(sampling={"num_top_logprobs": 21}), "sampling.num_top_logprobs"),
        (request(n=0), "n"),
        (request(n=-2), "n"),
        (request(n=9), "n"),
        (request(output_mode=3), "output_mode"),  # a value this build does not know
        (request(output_mode=-1), "output_mode"),
    ],
)
def test_bad_input_names_the_field(req, field):
    with pytest.raises(InvalidRequestError) as info:
        parse_generate_request(req, LIMITS)
    assert info.value.field == field
    assert field in str(info.value)


def test_defaults_of_unset_fields():
    parsed = parse_generate_request(request(), LIMITS)
    assert parsed.n == 1
    assert parsed.sampling == SamplingParams()
    assert parsed.sampling.temperature == 1.0
    assert parsed.max_tokens == LIMITS.max_model_len - 3  # unset max_tokens: up to the context
    assert parsed.policy_version is None
    assert parsed.output_mode is OutputMode.STREAM  # OUTPUT_MODE_UNSPECIFIED


def test_output_modes_parse_and_round_trip():
    for mode in OutputMode:
        assert parse_generate_request(request(output_mode=mode.to_proto()), LIMITS).output_mode is mode
    assert (
        parse_generate_request(request(output_mode=common_pb2.OUTPUT_MODE_FINAL), LIMITS).output_mode
        == "final"
    )


def test_boundaries_that_are_allowed():
    parsed = parse_generate_request(
        request(n=8, sampling={"temperature": 0.0, "top_p": 1.0, "min_p": 1.0, "max_tokens": 61}), LIMITS
    )
    assert parsed.sampling.is_greedy
    assert parsed.max_tokens == 61


def test_text_prompt_needs_a_tokenizer():
    text_request = common_pb2.GenerateRequest(request_id="t", prompt_text="hello")
    with pytest.raises(InvalidRequestError) as info:
        parse_generate_request(text_request, LIMITS)
    assert info.value.field == "prompt_text"
    parsed = parse_generate_request(text_request, LIMITS, tokenize=lambda text: [len(text), 7])
    assert parsed.prompt_token_ids == (5, 7)


def test_empty_request_id_gets_a_fresh_one():
    a = parse_generate_request(common_pb2.GenerateRequest(prompt_token_ids=[1]), LIMITS)
    b = parse_generate_request(common_pb2.GenerateRequest(prompt_token_ids=[1]), LIMITS)
    assert a.request_id and b.request_id and a.request_id != b.request_id


def test_sampling_round_trips_through_proto():
    params = SamplingParams(
        temperature=0.75,
        top_p=0.875,
        top_k=5,
        min_p=0.125,  # exact in fp32 (the wire type)
        max_tokens=9,
        seed=3,
        stop_token_ids=frozenset({4, 2}),
        ignore_eos=True,
        num_top_logprobs=2,
        return_raw_logprobs=True,
    )
    assert sampling_from_proto(sampling_to_proto(params)) == params
