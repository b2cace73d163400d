"""Typed results of a Generate stream, and the assembler that builds them from its messages.

Used by the client (client/generation.py) for what callers get back, and by the router's audit log
(router/audit.py) for what it records, so both describe a response the same way. The assembler
checks I1 on arrival: every message of a response must carry the same policy version.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from epochserve.errors import RuntimeGuardError
from epochserve.proto.v1 import common_pb2

if TYPE_CHECKING:
    import numpy as np

FinishReasonName = Literal["stop", "length", "abort", "unspecified"]
_FINISH_NAMES: dict[int, FinishReasonName] = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_ABORT: "abort",
}


class MixedVersionError(RuntimeGuardError):
    """A response carried two policy versions (I1 broken somewhere upstream; INTERNAL)."""


@dataclass(frozen=True, slots=True)
class Diagnostics:
    """How a sample was produced (common.proto Diagnostics); attempts/rerun are the router's."""

    worker_id: str
    tp_size: int
    policy_version: int
    seed: int
    kernel_mode: str
    prefix_cache_hit_blocks: int
    queue_seconds: float
    prefill_seconds: float
    decode_seconds: float
    attempts: int  # workers the router started the request on (1: no retry)
    rerun_under_new_version: bool  # re-run under a newer version after a drain=abort rollout
    num_preemptions: int

    @classmethod
    def from_proto(cls, msg: common_pb2.Diagnostics) -> Diagnostics:
        return cls(**{name: getattr(msg, name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class TopLogprobs:
    token_ids: tuple[int, ...]  # most likely first
    logprobs: tuple[float, ...]  # processed, same order


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished sample of a response."""

    sample_index: int
    policy_version: int  # of every token below
    token_ids: tuple[int, ...]
    processed_logprobs: tuple[float, ...]  # fp32 log-softmax of the distribution sampled from
    raw_logprobs: tuple[float, ...]  # unprocessed; empty unless requested
    top_logprobs: tuple[TopLogprobs, ...]  # one per token when requested
    support_sizes: tuple[int, ...]  # tokens each processed distribution kept; empty unless requested
    finish_reason: FinishReasonName
    abort_reason: str
    num_prompt_tokens: int
    worker_id: str
    diagnostics: Diagnostics
    # return_prompt_logprobs: prompt token i's processed logprob for i >= 1 (-inf: outside the support)
    prompt_logprobs: tuple[float, ...] = ()
    # return_routed_experts (MoE models): per sampled token, and per prompt position, the expert ids
    # of every MoE layer, layer-major (num_moe_layers * routed_top_k each; common.proto
    # RoutedExperts). A token's routing is that of the position before it. routed_array() reshapes.
    routed_experts: tuple[tuple[int, ...], ...] = ()
    prompt_routed_experts: tuple[tuple[int, ...], ...] = ()
    routed_top_k: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def routed_array(self, prompt: bool = False) -> np.ndarray:
        """routed_experts (or, with prompt, prompt_routed_experts) as a numpy int64 array
        [positions, num_moe_layers, routed_top_k]."""
        import numpy as np  # here: the router imports this module and never needs numpy

        rows = self.prompt_routed_experts if prompt else self.routed_experts
        top_k = max(self.routed_top_k, 1)
        return np.asarray(rows, dtype=np.int64).reshape(len(rows), -1, top_k)


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """A complete response: every sample, all of one policy version."""

    request_id: str
    policy_version: int
    samples: tuple[Sample, ...]  # by sample_index
    # from sending to the first token, measured by the client (FINAL: to the first whole sample)
    ttft_seconds: float | None
    latency_seconds: float  # from sending to the last message


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """Stream event: new tokens of one sample."""

    request_id: str
    sample_index: int
    policy_version: int
    token_ids: tuple[int, ...]
    processed_logprobs: tuple[float, ...]
    raw_logprobs: tuple[float, ...]
    received_at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class SampleFinished:
    """Stream event: one sample ended; `sample` holds all of it."""

    request_id: str
    sample: Sample
    received_at: float  # time.monotonic()


StreamEvent = TokenChunk | SampleFinished


@dataclass(slots=True)
class _Partial:
    token_ids: list[int] = field(default_factory=list)
    processed_logprobs: list[float] = field(default_factory=list)
    raw_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    support_sizes: list[int] = field(default_factory=list)
    prompt_logprobs: list[float] = field(default_factory=list)
    routed_experts: list[tuple[int, ...]] = field(default_factory=list)
    prompt_routed_experts: list[tuple[int, ...]] = field(default_factory=list)
    routed_top_k: int = 0

    def extend(self, chunk: common_pb2.GenerateChunk) -> None:
        self.prompt_logprobs.extend(chunk.prompt_logprobs)
        if chunk.routed_top_k:
            self.routed_top_k = chunk.routed_top_k
            self.routed_experts.extend(tuple(r.expert_ids) for r in chunk.routed_experts)
            self.prompt_routed_experts.extend(tuple(r.expert_ids) for r in chunk.prompt_routed_experts)
        self.token_ids.extend(chunk.token_ids)
        self.processed_logprobs.extend(chunk.logprobs)
        self.raw_logprobs.extend(chunk.raw_logprobs)
        self.top_logprobs.extend(
            TopLogprobs(tuple(t.token_ids), tuple(t.logprobs)) for t in chunk.top_logprobs
        )
        self.support_sizes.extend(chunk.support_sizes)


def tokens_of(response: common_pb2.GenerateResponse) -> common_pb2.GenerateChunk:
    """The tokens one message carries: its chunk (STREAM), or its finish's `output` (FINAL: the whole
    sample; empty in a STREAM finish). Read-only: the empty default is not attached to `response`."""
    return response.chunk if response.HasField("chunk") else response.finish.output


class ResponseAssembler:
    """Feed it a Generate stream's messages in order, in either output mode; it returns one event
    per message (STREAM: TokenChunk per chunk, SampleFinished per finish; FINAL: SampleFinished
    only) and keeps the finished samples. Raises MixedVersionError when versions differ within
    the response."""

    def __init__(self) -> None:
        self.request_id = ""
        self.policy_version: int | None = None
        # time.monotonic() of the first message with tokens: a chunk, or in FINAL a whole sample
        self.first_token_at: float | None = None
        self.last_at: float | None = None  # of the last message
        self._partial: dict[int, _Partial] = {}
        self._finished: dict[int, Sample] = {}

    def add(self, response: common_pb2.GenerateResponse) -> StreamEvent:
        now = time.monotonic()
        self.last_at = now
        self.request_id = response.request_id
        if self.policy_version is None:
            self.policy_version = response.policy_version
        elif response.policy_version != self.policy_version:
            raise MixedVersionError(
                response.request_id,
                f"policy version {response.policy_version} after {self.policy_version} in one response",
            )
        partial = self._partial.setdefault(response.sample_index, _Partial())
        tokens = tokens_of(response)
        if tokens.token_ids and self.first_token_at is None:
            self.first_token_at = now
        partial.extend(tokens)
        if response.HasField("chunk"):
            return TokenChunk(
                response.request_id,
                response.sample_index,
                response.policy_version,
                tuple(tokens.token_ids),
                tuple(tokens.logprobs),
                tuple(tokens.raw_logprobs),
                now,
            )
        sample = _finish(response, self._partial.pop(response.sample_index))
        self._finished[response.sample_index] = sample
        return SampleFinished(response.request_id, sample, now)

    def samples(self) -> tuple[Sample, ...]:
        """The finished samples, by index."""
        return tuple(self._finished[i] for i in sorted(self._finished))

    def result(self, request_id: str, started_at: float) -> GenerateResult:
        """The complete response, timed from `started_at` (time.monotonic() when it was sent)."""
        end = self.last_at if self.last_at is not None else time.monotonic()
        return GenerateResult(
            request_id=self.request_id or request_id,
            policy_version=self.policy_version or 0,
            samples=self.samples(),
            ttft_seconds=None if self.first_token_at is None else self.first_token_at - started_at,
            latency_seconds=end - started_at,
        )


def finish_reason_name(value: int) -> FinishReasonName:
    return _FINISH_NAMES.get(value, "unspecified")


def _finish(response: common_pb2.GenerateResponse, partial: _Partial) -> Sample:
    finish = response.finish
    return Sample(
        sample_index=response.sample_index,
        policy_version=response.policy_version,
        token_ids=tuple(partial.token_ids),
        processed_logprobs=tuple(partial.processed_logprobs),
        raw_logprobs=tuple(partial.raw_logprobs),
        top_logprobs=tuple(partial.top_logprobs),
        support_sizes=tuple(partial.support_sizes),
        finish_reason=finish_reason_name(finish.finish_reason),
        abort_reason=finish.abort_reason,
        num_prompt_tokens=finish.num_prompt_tokens,
        worker_id=finish.worker_id,
        diagnostics=Diagnostics.from_proto(finish.diagnostics),
        prompt_logprobs=tuple(partial.prompt_logprobs),
        routed_experts=tuple(partial.routed_experts),
        prompt_routed_experts=tuple(partial.prompt_routed_experts),
        routed_top_k=partial.routed_top_k,
    )
