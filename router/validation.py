"""Request validation at the router: the worker's rules (epochserve.proto.convert), applied early.

The router checks a request against the model limits its workers reported (GetWorkerInfo), with
the same function and messages as the worker, so that a bad request is refused before it waits
in a queue. What it cannot check it leaves to the worker, whose INVALID_ARGUMENT reaches the
client unchanged: a text prompt (the router has no tokenizer; sampling, n, output_mode and stop
tokens are still checked) and anything limit-bound before any worker answered.
"""

from __future__ import annotations

from epochserve.errors import InvalidRequestError
from epochserve.proto.convert import output_mode_from_proto, parse_generate_request, sampling_from_proto
from epochserve.proto.v1 import common_pb2
from epochserve.router.policies import RouteRequest, estimate_cost
from epochserve.router.policies.base import CHARS_PER_TOKEN_GUESS
from epochserve.sampling import ModelLimits, validate_n, validate_stop_tokens


def validate_request(request: common_pb2.GenerateRequest, limits: ModelLimits | None) -> RouteRequest:
    """What the policies need of a valid request; InvalidRequestError names the offending field.
    `request.request_id` must be set already (the router assigns one when the client did not)."""
    if request.HasField("policy_version"):
        raise InvalidRequestError(
            "policy_version", "is set by the router; ask for a version with min_policy_version"
        )
    if request.prompt_token_ids and limits is not None:
        parsed = parse_generate_request(request, limits)
        cost = estimate_cost(len(parsed.prompt_token_ids), parsed.max_tokens, parsed.n)
        return RouteRequest(request.request_id, parsed.prompt_token_ids, "", parsed.n, cost)
    if not request.prompt_token_ids and not request.prompt_text:
        raise InvalidRequestError("prompt_token_ids", "the prompt is empty")
    sampling = sampling_from_proto(request.sampling)  # validates every sampling field
    output_mode_from_proto(request)
    n = request.n if request.HasField("n") else 1
    validate_n(n, limits or ModelLimits(vocab_size=2**32, max_model_len=2**32, max_n=2**31 - 1))
    if limits is not None:
        validate_stop_tokens(list(sampling.stop_token_ids), limits)
    num_prompt_tokens = len(request.prompt_token_ids) or len(request.prompt_text) // CHARS_PER_TOKEN_GUESS + 1
    cost = estimate_cost(num_prompt_tokens, sampling.max_tokens, n)
    return RouteRequest(request.request_id, tuple(request.prompt_token_ids), request.prompt_text, n, cost)
