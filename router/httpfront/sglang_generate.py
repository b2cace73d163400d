"""POST /generate and GET /get_weight_version in SGLang's shapes, for RL frameworks that drive
SGLang over HTTP (token ids in, token ids and logprobs out; docs/http.md).

A response (one per sample; a list when n > 1) is `{text, output_ids, meta_info}`, meta_info
holding `finish_reason` ({"type": "length" | "stop" | "abort", ...}), the token counts,
`output_token_logprobs` as `[[logprob, token_id, text or null], ...]` when asked (with
`logprob_start_len` >= 0 also the prompt's, `input_token_logprobs`: scoring.py), and
`weight_version`: the policy version (as a string, SGLang's type; `policy_version` holds it as a
number). With `return_routed_experts`, meta_info also holds `routed_experts` (per output token) and
`prompt_routed_experts` (per prompt position). A stream sends one `data:` event per sample at each
wake-up: `text` so far, the `output_ids` and logprobs (and routed experts) that arrived since (the
input logprobs and the prompt's routed experts in each sample's first). `max_new_tokens: 0` scores
without generating.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response

from epochserve.errors import InvalidRequestError
from epochserve.router.httpfront.codec import Codec
from epochserve.router.httpfront.front import Front, event_stream
from epochserve.router.httpfront.requests import GenerationFields
from epochserve.router.httpfront.run import Generation
from epochserve.router.httpfront.samples import Piece, SampleText
from epochserve.router.httpfront.scoring import NO_ALTERNATIVES, sglang_input_logprobs
from epochserve.router.httpfront.sglang_shapes import GenerateBody, SglSamplingParams
from epochserve.router.httpfront.shapes import gather
from epochserve.router.httpfront.translate import translate

# The request path's field names → SGLang's.
PARAMS = {
    "sampling.temperature": "sampling_params.temperature",
    "sampling.top_p": "sampling_params.top_p",
    "sampling.top_k": "sampling_params.top_k",
    "sampling.min_p": "sampling_params.min_p",
    "sampling.seed": "sampling_params.sampling_seed",
    "sampling.stop_token_ids": "sampling_params.stop_token_ids",
    "sampling.max_tokens": "sampling_params.max_new_tokens",
    "sampling.num_top_logprobs": "top_logprobs_num",
    "n": "sampling_params.n",
    "presence_penalty": "sampling_params.presence_penalty",
    "frequency_penalty": "sampling_params.frequency_penalty",
    "sampling.return_routed_experts": "return_routed_experts",
}


def params_of(body: GenerateBody) -> dict[str, str]:
    return {**PARAMS, "prompt_token_ids": "input_ids" if body.input_ids is not None else "text"}


def prompt_of(front: Front, body: GenerateBody) -> list[int]:
    """One prompt per request: a response names one policy version, a batch could run on two."""
    if body.input_ids is not None:
        if all(isinstance(t, int) for t in body.input_ids):
            return [int(t) for t in body.input_ids]  # type: ignore[arg-type]
        raise InvalidRequestError("input_ids", "one prompt per request (send a request for each)")
    if isinstance(body.text, str):
        return front.codec.encode(body.text)
    if body.text is None:
        raise InvalidRequestError("text", "is required (or input_ids)")
    raise InvalidRequestError("text", "one prompt per request (send a request for each)")


def refuse_unsupported(sampling: SglSamplingParams) -> None:
    for name, neutral in (("repetition_penalty", 1.0), ("min_new_tokens", 0)):
        if getattr(sampling, name) not in (None, neutral):
            raise InvalidRequestError(f"sampling_params.{name}", f"is not supported (only {neutral})")
    for name in ("json_schema", "regex", "ebnf"):
        if getattr(sampling, name) is not None:
            raise InvalidRequestError(f"sampling_params.{name}", "constrained decoding is not supported")


def as_generation_fields(front: Front, body: GenerateBody) -> GenerationFields:
    sampling = body.sampling_params
    return GenerationFields(
        model=front.model_name,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=0 if sampling.top_k == -1 else sampling.top_k,
        min_p=sampling.min_p,
        n=sampling.n,
        stop=sampling.stop,
        stop_token_ids=sampling.stop_token_ids,
        ignore_eos=sampling.ignore_eos,
        seed=sampling.sampling_seed,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        stream=body.stream,
        min_policy_version=body.min_policy_version,
        return_raw_logprobs=body.return_raw_logprobs,
        return_routed_experts=body.return_routed_experts,
        output_mode=body.output_mode,
        timeout=body.timeout,
    )


def input_logprobs_start(body: GenerateBody, prompt: list[int]) -> int | None:
    """The prompt position input logprobs start at (logprob_start_len); None: output logprobs only."""
    start = body.logprob_start_len
    if not body.return_logprob or start == -1:
        return None
    if not 0 <= start < len(prompt):
        raise InvalidRequestError(
            "logprob_start_len",
            f"must be -1 (output only) or in [0, {len(prompt)}) for this prompt, got {start}",
        )
    if body.top_logprobs_num:  # scoring.py: prompt tokens come with their own logprob only
        message = f"must be 0 with logprob_start_len >= 0 ({NO_ALTERNATIVES}), got {body.top_logprobs_num}"
        raise InvalidRequestError("top_logprobs_num", message)
    return start


async def generate(front: Front, body: GenerateBody) -> Response:
    refuse_unsupported(body.sampling_params)
    prompt = prompt_of(front, body)
    scores_start = input_logprobs_start(body, prompt)
    max_tokens = body.sampling_params.max_new_tokens
    if max_tokens is not None and max_tokens < 0:
        raise InvalidRequestError(
            "sampling.max_tokens", f"must be >= 0 (0: score the prompt only), got {max_tokens}"
        )
    translated = translate(
        as_generation_fields(front, body),
        prompt,
        max_tokens=max_tokens,
        num_top_logprobs=body.top_logprobs_num,
        limits=front.backend.limits,
        return_prompt_logprobs=scores_start is not None,
        is_score_only=max_tokens == 0,  # SGLang's way to score a prompt: prefill only
    )
    generation = await front.start(translated, body.timeout)
    reply = _Reply(front.codec, body, generation, prompt, scores_start)
    if body.stream:
        return event_stream(_events(reply), params_of(body), generation.request_id)
    choices = gather([piece async for piece in generation.pieces()], translated.n)
    outputs = [reply.output(c.index, c.text, c.pieces, c.finish_reason) for c in choices]
    return JSONResponse(outputs[0] if translated.n == 1 else outputs)


async def _events(reply: _Reply) -> AsyncIterator[list[dict[str, Any]]]:
    """One event per sample that has new output at each wake-up, written together."""
    texts = [""] * len(reply.generation.samples)
    started: set[int] = set()  # samples whose first event (with the input logprobs) went out
    async for batch in reply.generation.batches():
        events = []
        for piece in batch:
            texts[piece.index] += piece.text
            is_first = piece.index not in started
            started.add(piece.index)
            events.append(
                reply.output(piece.index, texts[piece.index], [piece], piece.finish_reason, is_first)
            )
        yield events


@dataclass(frozen=True, slots=True)
class _Reply:
    """What every response of one request shares."""

    codec: Codec
    body: GenerateBody
    generation: Generation
    prompt: list[int]
    scores_start: int | None  # logprob_start_len; None: no input logprobs

    def output(
        self, index: int, text: str, pieces: Sequence[Piece], finish_reason: str | None, is_first: bool = True
    ) -> dict[str, Any]:
        """One sample's response (streamed: text so far, the ids and logprobs of `pieces`; the input
        logprobs when `is_first`, the sample's first event)."""
        body, generation = self.body, self.generation
        sample = generation.samples[index]
        version = generation.policy_version or 0
        meta: dict[str, Any] = {
            "id": generation.request_id,
            "finish_reason": _finish(finish_reason, sample),
            "prompt_tokens": len(self.prompt),
            "completion_tokens": sample.num_tokens,  # so far
            "cached_tokens": 0,  # not reported by the workers
            "weight_version": str(version),
            "policy_version": version,
        }
        if body.return_logprob:
            meta["output_token_logprobs"] = [
                self._entry(lp, t) for p in pieces for t, lp in zip(p.token_ids, p.logprobs, strict=True)
            ]
        if body.return_logprob and body.top_logprobs_num:
            meta["output_top_logprobs"] = [
                [self._entry(lp, t) for t, lp in zip(*top, strict=True)]
                for p in pieces
                for top in p.top_logprobs
            ]
        prompt_logprobs = [x for p in pieces for x in p.prompt_logprobs]  # a sample's first piece
        if self.scores_start is not None and is_first:
            meta["input_token_logprobs"] = sglang_input_logprobs(
                self.codec, self.prompt, prompt_logprobs, self.scores_start, body.return_text_in_logprobs
            )
        if body.return_raw_logprobs:
            meta["raw_logprobs"] = [x for p in pieces for x in p.raw_logprobs]
        if body.return_routed_experts:  # the prompt's in a sample's first piece only
            meta["routed_experts"] = [r for p in pieces for r in p.routed_experts]
            meta["prompt_routed_experts"] = [r for p in pieces for r in p.prompt_routed_experts]
        ids = [t for p in pieces for t in p.token_ids]
        output: dict[str, Any] = {"text": text, "output_ids": ids, "meta_info": meta}
        if len(generation.samples) > 1:
            output["index"] = index
        return output

    def _entry(self, logprob: float, token_id: int) -> list[Any]:
        text = self.codec.token_text(token_id) if self.body.return_text_in_logprobs else None
        return [logprob, token_id, text]


def _finish(reason: str | None, sample: SampleText) -> dict[str, Any] | None:
    """SGLang's finish_reason: a stop matched a string, or a token (the end of turn, a stop token)."""
    if reason is None:
        return None
    if reason == "length":
        return {"type": "length", "length": sample.num_tokens}
    if reason == "stop":
        matched = sample.stop_string if sample.stop_string is not None else sample.last_token_id
        return {"type": "stop", "matched": matched}
    return {"type": reason, "message": f"the sample ended with finish reason {reason!r}"}


async def weight_version(front: Front) -> Response:
    await front.backend.refresh()  # exact: a trainer asks right after a rollout it waited for
    version = front.backend.version
    if version is None:
        return JSONResponse({"weight_version": None, "policy_version": None}, 503)
    return JSONResponse({"weight_version": str(version), "policy_version": version})
