"""The worker's response assembly per output mode (worker/serving/responses.py), fed the outputs of a
real tiny engine: FINAL sends exactly one message per sample, at its end, holding what the STREAM
chunks of the very same outputs concatenate to; an abort part-way ends both modes the same way."""

from __future__ import annotations

import pytest
from fixtures.engine import make_engine, make_request

from epochserve.proto.convert import OutputMode
from epochserve.proto.results import ResponseAssembler
from epochserve.proto.v1 import common_pb2
from epochserve.worker.engine.outputs import SequenceOutput
from epochserve.worker.serving.responses import ResponseBuilder, WorkerStamp

STAMP = WorkerStamp("w0", 1, "torch")
PROMPT = [5, 17, 33, 9, 100, 200, 300, 7, 8, 11]
N = 3
MAX_TOKENS = 12
# Every optional per-token field, so that each is checked to travel the same way in both modes.
SAMPLING = dict(
    temperature=1.0, top_p=0.9, seed=11, max_tokens=MAX_TOKENS, ignore_eos=True,
    num_top_logprobs=2, return_raw_logprobs=True, return_support_size=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def engine(tiny_model_dirs):
    return make_engine(tiny_model_dirs["llama"], block_size=4, num_kv_blocks=256)


def engine_batches(
    engine, request_id: str, abort_after_steps: int | None = None, mode: OutputMode = OutputMode.STREAM
) -> list[list[SequenceOutput]]:
    """The request's outputs, one list per engine step, as the engine loop hands them to the service;
    with abort_after_steps, the request is aborted ("client") after that many steps."""
    engine.add_request(make_request(request_id, PROMPT, engine.limits, n=N, output_mode=mode, **SAMPLING))
    batches: list[list[SequenceOutput]] = []
    while engine.has_work():
        if len(batches) == abort_after_steps:
            batches.append(engine.abort_request(request_id, "client"))
            break
        batches.append(engine.step())
    assert not engine.has_work()
    return batches


def wire(batches: list[list[SequenceOutput]], mode: OutputMode) -> list[common_pb2.GenerateResponse]:
    builder = ResponseBuilder(STAMP, mode)
    return [response for batch in batches for response in builder.responses(batch)]


def concatenated_stream(messages: list[common_pb2.GenerateResponse], index: int) -> common_pb2.GenerateChunk:
    """Sample `index`'s STREAM chunks merged into one (MergeFrom appends repeated fields in order)."""
    merged = common_pb2.GenerateChunk()
    for message in messages:
        if message.sample_index == index and message.HasField("chunk"):
            merged.MergeFrom(message.chunk)
    return merged


def assembled(messages: list[common_pb2.GenerateResponse]):
    assembler = ResponseAssembler()
    for message in messages:
        assembler.add(message)
    return assembler.samples()


def check_final_is_stream_in_one_message(batches) -> list[common_pb2.GenerateResponse]:
    stream, final = wire(batches, OutputMode.STREAM), wire(batches, OutputMode.FINAL)
    assert len(final) == N and sorted(m.sample_index for m in final) == list(range(N))
    stream_finishes = {m.sample_index: m for m in stream if m.HasField("finish")}
    for message in final:
        assert message.HasField("finish") and not message.HasField("chunk")
        assert message.finish.output == concatenated_stream(stream, message.sample_index)
        without_tokens = common_pb2.GenerateResponse()
        without_tokens.CopyFrom(message)
        without_tokens.finish.ClearField("output")
        assert without_tokens == stream_finishes[message.sample_index]  # finish, version, diagnostics
    assert all(not m.finish.HasField("output") for m in stream_finishes.values())
    assert assembled(final) == assembled(stream)  # what clients and the audit log get
    return final


def test_final_sends_one_message_per_sample_equal_to_the_concatenated_stream_chunks(engine):
    batches = engine_batches(engine, "whole")
    assert sum(1 for batch in batches for o in batch if o.token_ids) > N  # STREAM: several chunks each
    final = check_final_is_stream_in_one_message(batches)
    for message in final:
        output = message.finish.output
        assert message.finish.finish_reason == common_pb2.FINISH_REASON_LENGTH
        assert len(output.token_ids) == len(output.logprobs) == len(output.raw_logprobs) == MAX_TOKENS
        assert len(output.top_logprobs) == len(output.support_sizes) == MAX_TOKENS


def test_a_sample_aborted_part_way_ends_with_abort_and_the_tokens_it_had_in_both_modes(engine):
    batches = engine_batches(engine, "aborted", abort_after_steps=4)  # the prefill and 3 decodes
    final = check_final_is_stream_in_one_message(batches)
    for message in final:
        assert message.finish.finish_reason == common_pb2.FINISH_REASON_ABORT
        assert message.finish.abort_reason == "client"
        assert 0 < len(message.finish.output.token_ids) < MAX_TOKENS
        assert message.finish.num_generated_tokens == len(message.finish.output.token_ids)


def test_final_sends_each_sample_in_the_batch_where_it_ends_and_nothing_before(engine):
    builder = ResponseBuilder(STAMP, OutputMode.FINAL)
    for batch in engine_batches(engine, "held"):
        ended = sorted(o.sample_index for o in batch if o.finish is not None)
        assert sorted(m.sample_index for m in builder.responses(batch)) == ended


@pytest.mark.parametrize("abort_after_steps", [None, 4])
def test_the_engine_reports_a_final_sample_once_with_what_its_stream_outputs_add_up_to(
    engine, abort_after_steps
):
    """FINAL sequences cost the server nothing per step: the engine reports each once, at its end
    (finish or abort), with every token; the builder then passes it through."""
    stream = engine_batches(engine, "s", abort_after_steps)
    final = engine_batches(engine, "f", abort_after_steps, OutputMode.FINAL)
    outputs = [o for batch in final for o in batch]
    assert sorted(o.sample_index for o in outputs) == list(range(N))
    assert all(o.finish is not None for o in outputs)
    for output in outputs:
        pieces = [o for batch in stream for o in batch if o.sample_index == output.sample_index]
        for name in ("token_ids", "processed_logprobs", "raw_logprobs", "top_logprobs", "support_sizes"):
            assert getattr(output, name) == sum((getattr(o, name) for o in pieces), ()), name
        assert output.finish.reason == pieces[-1].finish.reason
    builder = ResponseBuilder(STAMP, OutputMode.FINAL)
    from_engine = {m.sample_index: m.finish for m in (m for batch in final for m in builder.responses(batch))}
    from_stream = {m.sample_index: m.finish for m in wire(stream, OutputMode.FINAL)}
    for index, finish in from_stream.items():  # the wire messages, timings aside
        assert from_engine[index].output == finish.output
        assert from_engine[index].finish_reason == finish.finish_reason
