"""Prompt logprobs (scoring) in each API's shape: OpenAI's `echo` with `logprobs`, vLLM's
`prompt_logprobs`, SGLang's `input_token_logprobs`.

The engine returns, in a sample's first message, the processed logprob of every prompt token after
the first (SamplingParams.return_prompt_logprobs: the request's own temperature, top-k, top-p and
min-p, under the response's policy version). The first token has none: nothing precedes it. Only
each prompt token's own logprob is computed, not the most likely alternatives at its position, so a
request for those (top-N > 0 on prompt tokens) is refused by the routes, never half answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from epochserve.errors import InvalidRequestError
from epochserve.router.httpfront.codec import Codec

Json = dict[str, Any]

NO_ALTERNATIVES = "the top alternatives of prompt tokens are not computed"


def check_prompt_logprobs(value: int | None) -> None:
    """vLLM's `prompt_logprobs: N` asks for N alternatives besides each prompt token: only 0 here."""
    if value not in (None, 0):
        raise InvalidRequestError("prompt_logprobs", f"only 0 ({NO_ALTERNATIVES}), got {value}")


def prompt_scores(prompt: Sequence[int], prompt_logprobs: Sequence[float]) -> list[float | None]:
    """One entry per prompt token: None for the first, then the engine's values."""
    assert len(prompt_logprobs) == len(prompt) - 1, (len(prompt_logprobs), len(prompt))
    return [None, *prompt_logprobs]


def echo_logprobs(codec: Codec, prompt: Sequence[int], prompt_logprobs: Sequence[float]) -> Json:
    """OpenAI's completions `logprobs` of an echoed prompt (its `top_logprobs` is None: echo
    takes `logprobs: 0` only)."""
    tokens = [codec.token_text(t) for t in prompt]
    offsets = [0, *accumulate(len(text) for text in tokens)][: len(tokens)]
    return {
        "tokens": tokens,
        "token_logprobs": prompt_scores(prompt, prompt_logprobs),
        "top_logprobs": None,
        "text_offset": offsets,
    }


def joined(first: Json, then: Json) -> Json:
    """The echoed prompt's logprobs followed by the generated tokens' (offsets already in place)."""
    tops = None
    if first["top_logprobs"] is not None or then["top_logprobs"] is not None:
        tops = [*(first["top_logprobs"] or []), *(then["top_logprobs"] or [])]
    return {
        "tokens": [*first["tokens"], *then["tokens"]],
        "token_logprobs": [*first["token_logprobs"], *then["token_logprobs"]],
        "top_logprobs": tops,
        "text_offset": [*first["text_offset"], *then["text_offset"]],
    }


def vllm_prompt_logprobs(
    codec: Codec, prompt: Sequence[int], prompt_logprobs: Sequence[float]
) -> list[dict[str, Json] | None]:
    """vLLM's `prompt_logprobs`: None, then `{token_id: {logprob, decoded_token}}` per token (no
    `rank`: the engine does not rank prompt tokens)."""
    scores = prompt_scores(prompt, prompt_logprobs)
    return [
        None if score is None else {str(t): {"logprob": score, "decoded_token": codec.token_text(t)}}
        for t, score in zip(prompt, scores, strict=True)
    ]


def sglang_input_logprobs(
    codec: Codec, prompt: Sequence[int], prompt_logprobs: Sequence[float], start: int, with_text: bool
) -> list[list[Any]]:
    """SGLang's `input_token_logprobs` from prompt position `start` (logprob_start_len) on:
    `[logprob, token_id, text or None]`, the logprob None for the prompt's first token."""
    scores = prompt_scores(prompt, prompt_logprobs)
    return [
        [score, t, codec.token_text(t) if with_text else None]
        for t, score in zip(prompt[start:], scores[start:], strict=True)
    ]
