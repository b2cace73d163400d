"""Router-side validation (the worker's rules and messages), the response assembler, typed client
errors, and the audit log's lines."""

import json

import grpc
import pytest

from epochserve.client.errors import (
    AbortedError,
    GenerationError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
    error_from_rpc,
)
from epochserve.client.generation import build_request
from epochserve.errors import InvalidRequestError, RuntimeGuardError
from epochserve.proto.convert import OutputMode, parse_generate_request
from epochserve.proto.results import MixedVersionError, ResponseAssembler, SampleFinished, tokens_of
from epochserve.proto.v1 import common_pb2
from epochserve.router.audit import AuditLog, audit_record
from epochserve.router.validation import validate_request
from epochserve.sampling import ModelLimits, SamplingParams

LIMITS = ModelLimits(vocab_size=512, max_model_len=64, max_n=4)


def request(**fields):
    sampling = fields.pop("sampling", {})
    return common_pb2.GenerateRequest(
        request_id="r1", sampling=common_pb2.SamplingParams(**sampling), **fields
    )


@pytest.mark.parametrize(
    "fields",
    [
        dict(prompt_token_ids=[1, 600]),
        dict(prompt_token_ids=[]),
        dict(prompt_token_ids=[1, 2], sampling=dict(max_tokens=63)),
        dict(prompt_token_ids=[1, 2], sampling=dict(temperature=float("nan"))),
        dict(prompt_token_ids=[1, 2], sampling=dict(top_p=0.0)),
        dict(prompt_token_ids=[1, 2], n=5),
        dict(prompt_token_ids=[1, 2], sampling=dict(stop_token_ids=[700])),
        dict(prompt_token_ids=[1, 2], output_mode=5),
    ],
)
def test_the_router_refuses_what_the_worker_refuses_with_the_same_message(fields):
    with pytest.raises(InvalidRequestError) as worker_side:
        parse_generate_request(request(**fields), LIMITS)
    with pytest.raises(InvalidRequestError) as router_side:
        validate_request(request(**fields), LIMITS)
    assert str(router_side.value) == str(worker_side.value)


def test_a_text_prompt_passes_to_the_worker_but_its_sampling_and_n_are_checked():
    route = validate_request(request(prompt_text="hello there", n=2, sampling=dict(max_tokens=8)), LIMITS)
    assert route.prompt_text == "hello there" and route.n == 2 and route.cost_tokens > 16
    with pytest.raises(InvalidRequestError, match=r"sampling\.top_p"):
        validate_request(request(prompt_text="hi", sampling=dict(top_p=2.0)), LIMITS)
    with pytest.raises(InvalidRequestError, match=r"^n:"):
        validate_request(request(prompt_text="hi", n=9), LIMITS)
    with pytest.raises(InvalidRequestError, match=r"^output_mode:"):
        validate_request(request(prompt_text="hi", output_mode=5), LIMITS)


def test_before_any_worker_answered_only_limit_free_rules_apply():
    route = validate_request(request(prompt_token_ids=[1, 100_000], n=3), None)  # the worker decides
    assert route.prompt_token_ids == (1, 100_000)
    with pytest.raises(InvalidRequestError, match="prompt_token_ids"):
        validate_request(request(), None)


def test_clients_cannot_pin_a_version_themselves():
    with pytest.raises(InvalidRequestError, match=r"policy_version.*min_policy_version"):
        validate_request(request(prompt_token_ids=[1], policy_version=3), LIMITS)


def chunk(sample, version, tokens, logprobs):
    return common_pb2.GenerateResponse(
        request_id="r1",
        sample_index=sample,
        policy_version=version,
        chunk=common_pb2.GenerateChunk(token_ids=tokens, logprobs=logprobs),
    )


def finish(sample, version, worker="w0"):
    diagnostics = common_pb2.Diagnostics(worker_id=worker, policy_version=version, attempts=2, seed=7)
    return common_pb2.GenerateResponse(
        request_id="r1",
        sample_index=sample,
        policy_version=version,
        finish=common_pb2.GenerateFinish(
            finish_reason=common_pb2.FINISH_REASON_LENGTH, worker_id=worker, diagnostics=diagnostics
        ),
    )


def test_the_assembler_builds_samples_and_rejects_a_second_version():
    assembler = ResponseAssembler()
    for message in [chunk(0, 3, [5], [-0.5]), chunk(1, 3, [6, 7], [-1.0, -2.0]), chunk(0, 3, [8], [-0.25])]:
        assembler.add(message)
    assembler.add(finish(1, 3))
    assembler.add(finish(0, 3))
    result = assembler.result("r1", started_at=assembler.first_token_at or 0.0)
    assert result.policy_version == 3 and [s.sample_index for s in result.samples] == [0, 1]
    first = result.samples[0]
    assert first.token_ids == (5, 8) and first.processed_logprobs == (-0.5, -0.25)
    assert first.finish_reason == "length" and first.diagnostics.attempts == 2 and first.diagnostics.seed == 7
    assert result.ttft_seconds == 0.0 and result.latency_seconds >= 0
    with pytest.raises(MixedVersionError, match="r1") as mixed:
        assembler.add(chunk(0, 4, [1], [-1.0]))
    assert isinstance(mixed.value, RuntimeGuardError)  # INTERNAL at a server edge


def test_the_assembler_takes_final_messages_as_whole_samples():
    stream = [chunk(0, 3, [5], [-0.5]), chunk(1, 3, [6, 7], [-1.0, -2.0]), chunk(0, 3, [8], [-0.25])]
    stream += [finish(1, 3), finish(0, 3)]
    final = [finish(1, 3), finish(0, 3)]
    final[0].finish.output.MergeFrom(common_pb2.GenerateChunk(token_ids=[6, 7], logprobs=[-1.0, -2.0]))
    final[1].finish.output.MergeFrom(common_pb2.GenerateChunk(token_ids=[5, 8], logprobs=[-0.5, -0.25]))
    by_mode = {}
    for mode, messages in (("stream", stream), ("final", final)):
        assembler = ResponseAssembler()
        events = [assembler.add(message) for message in messages]
        by_mode[mode] = (assembler.samples(), events, assembler.first_token_at)
    assert by_mode["final"][0] == by_mode["stream"][0]
    assert all(isinstance(e, SampleFinished) for e in by_mode["final"][1])
    assert by_mode["final"][2] is not None  # TTFT: the first whole sample
    assert [tokens_of(m).token_ids for m in final] == [[6, 7], [5, 8]]
    assert tokens_of(stream[0]).token_ids == [5] and not tokens_of(stream[-1]).token_ids


class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailing=()):
        self._code, self._details, self._trailing = code, details, trailing

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


def test_rpc_errors_become_typed_errors_with_their_status_and_retry_hint():
    full = error_from_rpc(
        FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", (("grpc-retry-pushback-ms", "1500"),)),
        "r1",
    )
    assert isinstance(full, ResourceExhaustedError) and full.retry_after_seconds == 1.5
    assert full.request_id == "r1" and full.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert isinstance(error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x")), UnavailableError)
    assert isinstance(error_from_rpc(FakeRpcError(grpc.StatusCode.ABORTED, "x")), AbortedError)
    assert isinstance(
        error_from_rpc(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "x")), InvalidArgumentError
    )
    other = error_from_rpc(FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "no such service"))
    assert type(other) is GenerationError and other.code == grpc.StatusCode.UNIMPLEMENTED


def test_build_request_fills_in_a_request_id_and_the_sampling():
    built = build_request([1, 2], SamplingParams(temperature=0.0, max_tokens=4), n=3, min_policy_version=2)
    assert built.request_id and built.n == 3 and built.min_policy_version == 2
    assert built.sampling.temperature == 0.0 and built.sampling.max_tokens == 4
    assert build_request("text").prompt_text == "text"
    assert built.output_mode == common_pb2.OUTPUT_MODE_STREAM
    assert build_request([1], output_mode=OutputMode.FINAL).output_mode == common_pb2.OUTPUT_MODE_FINAL


def test_audit_lines_hold_what_verify_needs(tmp_path):
    assembler = ResponseAssembler()
    for message in [chunk(0, 2, [5, 6], [-0.5, -0.75]), finish(0, 2, worker="w1")]:
        assembler.add(message)
    forwarded = request(prompt_token_ids=[1, 2, 3], sampling=dict(temperature=0.5, seed=11), policy_version=2)
    log = AuditLog(tmp_path / "audit" / "log.jsonl")
    log.write(audit_record(forwarded, 2, assembler.samples(), "router-0"))
    log.write(audit_record(forwarded, 2, assembler.samples(), "router-0"))
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "audit" / "log.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    line = lines[0]
    assert (
        line["request_id"] == "r1" and line["policy_version"] == 2 and line["prompt_token_ids"] == [1, 2, 3]
    )
    assert line["sampling"]["temperature"] == 0.5 and line["sampling"]["top_p"] == 1.0  # defaults resolved
    [sample] = line["samples"]
    assert sample["token_ids"] == [5, 6] and sample["processed_logprobs"] == [-0.5, -0.75]
    assert sample["worker_id"] == "w1" and sample["diagnostics"]["policy_version"] == 2
