"""HTTP request fields → a GenerateRequest for the request flow, and the field names back.

The checks here are only those the protobuf message needs to be built at all (integer widths) and
the ones HTTP adds (unsupported OpenAI fields); every value rule is the gRPC path's: SamplingParams
on construction, then the flow's validate_request with the workers' model limits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from epochserve.errors import InvalidRequestError
from epochserve.proto.convert import OutputMode, sampling_to_proto
from epochserve.proto.v1 import common_pb2
from epochserve.router.httpfront.requests import GenerationFields
from epochserve.sampling import (
    ModelLimits,
    SamplingParams,
    resolve_max_tokens,
    validate_n,
    validate_prompt,
    validate_stop_tokens,
)

# Ranges of the message's integer fields, for requests read before any worker reported its limits.
UNBOUNDED = ModelLimits(vocab_size=2**32, max_model_len=2**32 - 1, max_n=2**31 - 1)

# The request path's field names → OpenAI's (a route adds its own for the prompt and max_tokens).
PARAMS = {
    "sampling.temperature": "temperature",
    "sampling.top_p": "top_p",
    "sampling.top_k": "top_k",
    "sampling.min_p": "min_p",
    "sampling.seed": "seed",
    "sampling.stop_token_ids": "stop_token_ids",
    "sampling.max_tokens": "max_tokens",
    "sampling.return_routed_experts": "return_routed_experts",
}


@dataclass(frozen=True, slots=True)
class Translated:
    request: common_pb2.GenerateRequest
    stops: tuple[str, ...]
    n: int
    is_score_only: bool = False  # max_tokens 0: the prompt's logprobs, no generated token returned


def translate(
    body: GenerationFields,
    prompt: list[int],
    *,
    max_tokens: int | None,
    num_top_logprobs: int,
    limits: ModelLimits | None,
    return_prompt_logprobs: bool = False,
    is_score_only: bool = False,
) -> Translated:
    """The GenerateRequest for `body` with `prompt` (ids); InvalidRequestError names the field.

    `is_score_only` (the route accepted max_tokens 0): the engine scores a prompt in the step that
    samples its first token, so it runs with max_tokens 1 and the response drops that token."""
    refuse_unsupported(body)
    bounds = limits or UNBOUNDED
    if is_score_only:
        max_tokens = 1
    params = SamplingParams(
        **_given(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            max_tokens=max_tokens,
            seed=body.seed,
        ),
        stop_token_ids=frozenset(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        num_top_logprobs=num_top_logprobs,
        return_raw_logprobs=body.return_raw_logprobs,
        return_prompt_logprobs=return_prompt_logprobs,
        return_routed_experts=body.return_routed_experts,
    )
    n = 1 if body.n is None else body.n
    validate_prompt(prompt, bounds)
    validate_n(n, bounds)
    validate_stop_tokens(sorted(params.stop_token_ids), bounds)
    resolve_max_tokens(params, len(prompt), bounds)
    if params.top_k >= 2**31:
        raise InvalidRequestError("sampling.top_k", f"must be < 2**31, got {params.top_k}")
    request = common_pb2.GenerateRequest(
        request_id=uuid.uuid4().hex,
        prompt_token_ids=prompt,
        sampling=sampling_to_proto(params),
        n=n,
        output_mode=output_mode(body).to_proto(),
    )
    if body.min_policy_version is not None:
        if not 0 <= body.min_policy_version < 2**64:
            raise InvalidRequestError(
                "min_policy_version", f"must be in [0, 2**64), got {body.min_policy_version}"
            )
        request.min_policy_version = body.min_policy_version
    return Translated(request, () if is_score_only else body.stops, n, is_score_only)


def output_mode(body: GenerationFields) -> OutputMode:
    """The client's choice; else FINAL (one message per sample) for a response sent whole, STREAM
    for a streamed one, and for stop strings (so that generation ends when every sample matched
    one, rather than at its end)."""
    if body.output_mode is not None:
        return OutputMode(body.output_mode)
    return OutputMode.STREAM if body.stream or body.stops else OutputMode.FINAL


def refuse_unsupported(body: GenerationFields) -> None:
    """OpenAI fields whose meaning this server cannot honour: refused rather than ignored."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise InvalidRequestError(name, "is not supported (only 0)")
    if body.logit_bias:
        raise InvalidRequestError("logit_bias", "is not supported")


def _given(**fields: Any) -> dict[str, Any]:
    """The fields the client set: SamplingParams' defaults stand for the others."""
    return {name: value for name, value in fields.items() if value is not None}
