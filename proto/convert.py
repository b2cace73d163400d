"""Conversions between epochserve.v1 messages and the plain types of epochserve.sampling.

parse_generate_request applies the contract's rules (docs/design.md §6) in one place for the router and
the worker: every refusal is an InvalidRequestError naming the offending field.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from epochserve.errors import InvalidRequestError
from epochserve.proto.v1 import common_pb2, generation_pb2
from epochserve.sampling import (
    ModelLimits,
    SamplingParams,
    resolve_max_tokens,
    validate_n,
    validate_prompt,
    validate_stop_tokens,
)

Tokenize = Callable[[str], list[int]]


class OutputMode(enum.StrEnum):
    """GenerateRequest.output_mode (common.proto says what each delivers); the values are the
    names the CLI and the load tester take."""

    STREAM = "stream"  # a chunk per engine step, then the finish
    FINAL = "final"  # one message per sample at its end, carrying all of it

    def to_proto(self) -> common_pb2.OutputMode:
        return _OUTPUT_MODES_TO_PROTO[self]


_OUTPUT_MODES_TO_PROTO = {
    OutputMode.STREAM: common_pb2.OUTPUT_MODE_STREAM,
    OutputMode.FINAL: common_pb2.OUTPUT_MODE_FINAL,
}
_OUTPUT_MODES_FROM_PROTO = {
    common_pb2.OUTPUT_MODE_UNSPECIFIED: OutputMode.STREAM,
    common_pb2.OUTPUT_MODE_STREAM: OutputMode.STREAM,
    common_pb2.OUTPUT_MODE_FINAL: OutputMode.FINAL,
}


def output_mode_from_proto(request: common_pb2.GenerateRequest) -> OutputMode:
    """The request's output mode; an enum value this build does not know (a newer client's, or
    garbage: proto3 keeps unknown enum numbers) is refused rather than streamed."""
    mode = _OUTPUT_MODES_FROM_PROTO.get(request.output_mode)
    if mode is None:
        raise InvalidRequestError(
            "output_mode", f"unknown value {request.output_mode} (OUTPUT_MODE_STREAM or OUTPUT_MODE_FINAL)"
        )
    return mode


@dataclass(frozen=True, slots=True)
class ParsedGenerateRequest:
    """A GenerateRequest that passed validation. Created at a server edge, consumed by its engine."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams
    n: int
    max_tokens: int  # resolved: never None, prompt + max_tokens fits the context
    policy_version: int | None  # the version the router pinned, if any
    min_policy_version: int | None
    # How the worker sends the response; the engine ignores it (it runs both modes the same way).
    output_mode: OutputMode = OutputMode.STREAM


def sampling_from_proto(msg: common_pb2.SamplingParams) -> SamplingParams:
    """Proto → SamplingParams with the documented defaults for unset fields."""
    return SamplingParams(
        temperature=msg.temperature if msg.HasField("temperature") else 1.0,
        top_p=msg.top_p if msg.HasField("top_p") else 1.0,
        top_k=msg.top_k if msg.HasField("top_k") else 0,
        min_p=msg.min_p if msg.HasField("min_p") else 0.0,
        max_tokens=msg.max_tokens if msg.HasField("max_tokens") else None,
        seed=msg.seed if msg.HasField("seed") else None,
        stop_token_ids=frozenset(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
        num_top_logprobs=msg.num_top_logprobs,
        return_raw_logprobs=msg.return_raw_logprobs,
        return_support_size=msg.return_support_size,
        return_prompt_logprobs=msg.return_prompt_logprobs,
        return_routed_experts=msg.return_routed_experts,
    )


def sampling_to_proto(params: SamplingParams) -> common_pb2.SamplingParams:
    msg = common_pb2.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        stop_token_ids=sorted(params.stop_token_ids),
        ignore_eos=params.ignore_eos,
        num_top_logprobs=params.num_top_logprobs,
        return_raw_logprobs=params.return_raw_logprobs,
        return_support_size=params.return_support_size,
        return_prompt_logprobs=params.return_prompt_logprobs,
        return_routed_experts=params.return_routed_experts,
    )
    if params.max_tokens is not None:
        msg.max_tokens = params.max_tokens
    if params.seed is not None:
        msg.seed = params.seed
    return msg


def limits_to_proto(limits: ModelLimits | None) -> generation_pb2.ModelLimits | None:
    """GetPolicyResponse.limits (None: unset, no worker answered yet)."""
    if limits is None:
        return None
    return generation_pb2.ModelLimits(
        vocab_size=limits.vocab_size, max_model_len=limits.max_model_len, max_n=limits.max_n
    )


def limits_from_policy(response: generation_pb2.GetPolicyResponse) -> ModelLimits | None:
    """The model limits a GetPolicy answer carries; None before a worker answered (or from a router
    that predates the field)."""
    if not response.HasField("limits"):
        return None
    limits = response.limits
    return ModelLimits(limits.vocab_size, limits.max_model_len, limits.max_n)


def parse_generate_request(
    request: common_pb2.GenerateRequest, limits: ModelLimits, tokenize: Tokenize | None = None
) -> ParsedGenerateRequest:
    """Validate and normalize a request; raises InvalidRequestError naming the field.

    A text prompt (prompt_text) is tokenized with `tokenize`; without one it is refused.
    An empty request_id is replaced by a fresh uuid, which every response then carries.
    """
    prompt = list(request.prompt_token_ids)
    if not prompt and request.prompt_text:
        if tokenize is None:
            raise InvalidRequestError("prompt_text", "this server takes token ids only")
        prompt = tokenize(request.prompt_text)
    validate_prompt(prompt, limits)
    sampling = sampling_from_proto(request.sampling)
    validate_stop_tokens(list(sampling.stop_token_ids), limits)
    n = request.n if request.HasField("n") else 1
    validate_n(n, limits)
    max_tokens = resolve_max_tokens(sampling, len(prompt), limits)
    output_mode = output_mode_from_proto(request)
    return ParsedGenerateRequest(
        request_id=request.request_id or uuid.uuid4().hex,
        prompt_token_ids=tuple(prompt),
        sampling=sampling,
        n=n,
        max_tokens=max_tokens,
        policy_version=request.policy_version if request.HasField("policy_version") else None,
        min_policy_version=request.min_policy_version if request.HasField("min_policy_version") else None,
        output_mode=output_mode,
    )


# A finish's abort_reason starts with this when an abort-drain rollout retired the sample. Routers
# re-run such requests under the new version when nothing was streamed yet (docs/design.md §4.8).
ROLLOUT_ABORT_PREFIX = "rollout:"


def rollout_abort_reason(new_version: int, why: str = "drain=abort") -> str:
    """`why`: drain=abort, or the drain deadline that ended the sample."""
    return f"{ROLLOUT_ABORT_PREFIX} retired by policy version {new_version} ({why})"


def is_rollout_abort(abort_reason: str) -> bool:
    return abort_reason.startswith(ROLLOUT_ABORT_PREFIX)
