"""A real worker process over gRPC: streaming, cancel, deadlines, Abort, bad input, health, shutdown."""

import math
import signal

import grpc
import pytest
from fixtures.grpc_client import info_of, wait_for_idle_pool
from fixtures.models import build_tiny_model
from fixtures.processes import running_worker
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from epochserve.proto.v1 import common_pb2, worker_pb2_grpc

VOCAB = 512


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker_service")
    # A long context so that a generation takes seconds: long enough to cancel in flight.
    model_dir = build_tiny_model("llama", root / "model", max_position_embeddings=4096)
    with running_worker(model_dir, root, "--block-size", "16", "--max-n", "4") as server:
        yield server


@pytest.fixture(scope="module")
def stub(worker):
    with grpc.insecure_channel(worker.address) as channel:
        yield worker_pb2_grpc.WorkerStub(channel)


def generate(stub, prompt=(5, 6, 7, 8), timeout=60, **sampling):
    n = sampling.pop("n", 1)
    request = common_pb2.GenerateRequest(
        request_id=sampling.pop("request_id", "req"),
        prompt_token_ids=list(prompt),
        sampling=common_pb2.SamplingParams(**sampling),
        n=n,
    )
    return stub.Generate(request, timeout=timeout)


def test_health_and_reflection(worker):
    with grpc.insecure_channel(worker.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "epochserve.v1.Worker"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
        assert "epochserve.v1.Worker" in names and "grpc.health.v1.Health" in names


def test_streams_every_sample_with_version_and_diagnostics(stub, worker):
    responses = list(
        generate(stub, request_id="stream", n=3, max_tokens=5, seed=9, ignore_eos=True, temperature=0.9)
    )
    assert {r.request_id for r in responses} == {"stream"}
    assert {r.policy_version for r in responses} == {0}
    finishes = {r.sample_index: r.finish for r in responses if r.HasField("finish")}
    assert sorted(finishes) == [0, 1, 2]
    for index, finish in finishes.items():
        tokens = [
            t for r in responses if r.sample_index == index and r.HasField("chunk") for t in r.chunk.token_ids
        ]
        logprobs = [
            lp
            for r in responses
            if r.sample_index == index and r.HasField("chunk")
            for lp in r.chunk.logprobs
        ]
        assert len(tokens) == len(logprobs) == 5 == finish.num_generated_tokens
        assert all(0 <= t < VOCAB for t in tokens) and all(lp <= 0 and math.isfinite(lp) for lp in logprobs)
        assert finish.finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert finish.num_prompt_tokens == 4
        assert finish.worker_id == worker.info["worker_id"] == finish.diagnostics.worker_id
        assert finish.diagnostics.seed == 9 and finish.diagnostics.policy_version == 0
        assert finish.diagnostics.kernel_mode == "torch" and finish.diagnostics.tp_size == 1
        # The rest of the trace: queue/prefill/decode times and prefix-cache hits (issue 8).
        d = finish.diagnostics
        assert d.queue_seconds >= 0 and d.prefill_seconds > 0 and d.decode_seconds > 0
        assert d.prefix_cache_hit_blocks == 0 and d.attempts == 1 and d.num_preemptions == 0
    # The last message of each sample is its finish.
    last = {}
    for r in responses:
        last[r.sample_index] = r
    assert all(r.HasField("finish") for r in last.values())


def test_cancel_frees_the_sequence_and_its_blocks(stub):
    stream = generate(stub, request_id="cancel", prompt=range(3, 40), max_tokens=3900, ignore_eos=True)
    first = next(stream)
    assert first.HasField("chunk")
    in_flight = info_of(stub)
    assert in_flight.num_running_seqs == 1
    assert in_flight.kv_cache.num_blocks_free < in_flight.kv_cache.num_blocks_total
    stream.cancel()
    wait_for_idle_pool(stub)


def test_deadline_exceeded_frees_blocks(stub):
    with pytest.raises(grpc.RpcError) as info_:
        list(
            generate(
                stub,
                request_id="deadline",
                prompt=range(3, 40),
                max_tokens=3900,
                ignore_eos=True,
                timeout=1.0,
            )
        )
    assert info_.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for_idle_pool(stub)


def test_abort_rpc_finishes_samples_with_a_reason(stub):
    stream = generate(stub, request_id="to-abort", n=2, prompt=range(3, 40), max_tokens=3900, ignore_eos=True)
    assert next(stream).HasField("chunk")
    reply = stub.Abort(common_pb2.AbortRequest(request_id="to-abort"), timeout=10)
    assert reply.found and reply.request_id == "to-abort"
    finishes = [r.finish for r in stream if r.HasField("finish")]
    assert len(finishes) == 2
    assert all(f.finish_reason == common_pb2.FINISH_REASON_ABORT and f.abort_reason for f in finishes)
    assert not stub.Abort(common_pb2.AbortRequest(request_id="to-abort"), timeout=10).found
    wait_for_idle_pool(stub)


BAD_INPUTS = [
    (dict(prompt=[5, VOCAB]), "prompt_token_ids"),
    (dict(prompt=[]), "prompt_token_ids"),
    (dict(prompt=[5] * 10, max_tokens=4090), "max_tokens"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-3), "top_k"),
    (dict(min_p=2.0), "min_p"),
    (dict(n=0), "n"),
    (dict(n=5), "n"),
    (dict(return_routed_experts=True), "return_routed_experts"),  # a dense model routes nothing
]


@pytest.mark.parametrize(("fields", "field_name"), BAD_INPUTS)
def test_bad_input_is_invalid_argument_and_the_worker_stays_up(stub, fields, field_name):
    with pytest.raises(grpc.RpcError) as error:
        list(generate(stub, request_id="bad", **fields))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_name in error.value.details()
    good = list(generate(stub, request_id="good", max_tokens=3, ignore_eos=True))
    assert sum(len(r.chunk.token_ids) for r in good if r.HasField("chunk")) == 3


def test_text_prompt_without_tokenizer_is_refused(stub):
    request = common_pb2.GenerateRequest(request_id="text", prompt_text="hello")
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Generate(request, timeout=10))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "prompt_text" in error.value.details()


def test_version_pin_mismatch_is_failed_precondition(stub):
    request = common_pb2.GenerateRequest(request_id="pin", prompt_token_ids=[5, 6], policy_version=3)
    with pytest.raises(grpc.RpcError) as error:
        list(stub.Generate(request, timeout=10))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_sigterm_stops_the_worker_cleanly(tmp_path, tiny_model_dirs):
    with running_worker(tiny_model_dirs["llama"], tmp_path, name="short-lived") as server:
        assert server.stop(signal.SIGTERM) == 0
