"""SequenceOutput → GenerateResponse: how engine results look on the wire, in either output mode.

STREAM sends, per sample, a chunk with the tokens of each batch of outputs, then the finish. FINAL
keeps each sample's tokens here and sends them inside its finish (GenerateFinish.output), one
message per sample: the same fields appended in the same order, so the two carry the same values.
A sample that ends early with an ABORT finish (Abort, drain=abort, the worker shutting down) ends
the same way in both modes, its finish carrying the tokens it had; a request that fails, is
cancelled or runs out of time gets no finish in either mode (the service ends it with a status,
and FINAL's held tokens are dropped with the builder).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from epochserve.proto.convert import OutputMode
from epochserve.proto.v1 import common_pb2
from epochserve.worker.engine.outputs import FinishInfo, SequenceOutput
from epochserve.worker.engine.sequence import FinishReason

_FINISH_REASONS = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: common_pb2.FINISH_REASON_ABORT,
}


@dataclass(frozen=True, slots=True)
class WorkerStamp:
    """What every finish message says about the worker."""

    worker_id: str
    tp_size: int
    kernel_mode: str


def append_tokens(chunk: common_pb2.GenerateChunk, outputs: Iterable[SequenceOutput]) -> None:
    """Append the outputs' tokens and per-token fields to chunk, in order (both modes use this)."""
    for output in outputs:
        chunk.prompt_logprobs.extend(output.prompt_logprobs)  # only a sample's first output has them
        chunk.token_ids.extend(output.token_ids)
        chunk.logprobs.extend(output.processed_logprobs)
        chunk.raw_logprobs.extend(output.raw_logprobs)
        chunk.support_sizes.extend(output.support_sizes)
        for ids, logprobs in output.top_logprobs:
            chunk.top_logprobs.add(token_ids=ids, logprobs=logprobs)
        if output.prompt_routed_experts is not None:  # only a sample's first output has them
            _append_routing(chunk, chunk.prompt_routed_experts, output.prompt_routed_experts)
        if output.routed_experts is not None:
            _append_routing(chunk, chunk.routed_experts, output.routed_experts)


def _append_routing(
    chunk: common_pb2.GenerateChunk,
    target: RepeatedCompositeFieldContainer[common_pb2.RoutedExperts],
    routing: np.ndarray,  # [positions, moe layers, top_k]
) -> None:
    """One RoutedExperts per position, its ids layer-major (common.proto)."""
    chunk.routed_top_k = routing.shape[2]
    for ids in routing.reshape(len(routing), -1).tolist():
        target.add(expert_ids=ids)


def chunk_response(outputs: list[SequenceOutput]) -> common_pb2.GenerateResponse:
    """Merge outputs of one sample into one chunk message (they share request, sample, version)."""
    first = outputs[0]
    chunk = common_pb2.GenerateChunk()
    append_tokens(chunk, outputs)
    return common_pb2.GenerateResponse(
        request_id=first.request_id,
        sample_index=first.sample_index,
        policy_version=first.policy_version,
        chunk=chunk,
    )


def finish_response(
    output: SequenceOutput, identity: WorkerStamp, tokens: common_pb2.GenerateChunk | None = None
) -> common_pb2.GenerateResponse:
    """The finish of a sample; with `tokens` (FINAL), the whole sample's tokens ride in it."""
    info: FinishInfo | None = output.finish
    assert info is not None and info.reason is not FinishReason.ERROR, "errors end the stream with a status"
    diagnostics = common_pb2.Diagnostics(
        worker_id=identity.worker_id,
        tp_size=identity.tp_size,
        policy_version=output.policy_version,
        seed=info.seed,
        kernel_mode=identity.kernel_mode,
        prefix_cache_hit_blocks=info.prefix_cache_hit_blocks,
        queue_seconds=info.queue_seconds,
        prefill_seconds=info.prefill_seconds,
        decode_seconds=info.decode_seconds,
        attempts=1,
        num_preemptions=info.num_preemptions,
    )
    finish = common_pb2.GenerateFinish(
        finish_reason=_FINISH_REASONS[info.reason],
        num_prompt_tokens=info.num_prompt_tokens,
        num_generated_tokens=info.num_generated_tokens,
        worker_id=identity.worker_id,
        diagnostics=diagnostics,
        abort_reason=info.abort_reason,
        output=tokens,
    )
    return common_pb2.GenerateResponse(
        request_id=output.request_id,
        sample_index=output.sample_index,
        policy_version=output.policy_version,
        finish=finish,
    )


def to_responses(outputs: list[SequenceOutput], identity: WorkerStamp) -> list[common_pb2.GenerateResponse]:
    """Wire messages for outputs of one request: per sample, one chunk with all its new tokens, then
    its finish if it ended (a finish is always a sample's last output)."""
    by_sample: dict[int, list[SequenceOutput]] = {}
    for output in outputs:
        by_sample.setdefault(output.sample_index, []).append(output)
    responses: list[common_pb2.GenerateResponse] = []
    for sample_outputs in by_sample.values():
        with_tokens = [o for o in sample_outputs if o.token_ids]
        if with_tokens:
            responses.append(chunk_response(with_tokens))
        last = sample_outputs[-1]
        if last.finish is not None:
            responses.append(finish_response(last, identity))
    return responses


@dataclass(slots=True)
class ResponseBuilder:
    """One request's wire messages in its output mode: feed it each batch of the request's engine
    outputs in order (`responses`); FINAL holds each sample's tokens until its finish."""

    identity: WorkerStamp
    mode: OutputMode = OutputMode.STREAM
    _held: dict[int, common_pb2.GenerateChunk] = field(default_factory=dict)  # FINAL, by sample index

    def responses(self, outputs: list[SequenceOutput]) -> list[common_pb2.GenerateResponse]:
        if self.mode is OutputMode.STREAM:
            return to_responses(outputs, self.identity)
        responses = []
        for output in outputs:
            tokens = self._held.setdefault(output.sample_index, common_pb2.GenerateChunk())
            append_tokens(tokens, (output,))
            if output.finish is not None:
                del self._held[output.sample_index]
                responses.append(finish_response(output, self.identity, tokens))
        return responses
