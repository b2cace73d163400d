"""Pieces of samples → OpenAI's logprobs shapes and choice fields, as plain dicts (serialized once,
by the route: no object per token), and whole choices from a sample's pieces.

Logprobs are the processed fp32 ones the engine returned (README "What logprobs mean"); `bytes`
is the UTF-8 of the token's own decoding (a token inside a multi-byte character decodes to U+FFFD).
A response sent whole has every field, null where unset; a streamed chunk leaves unset fields out
(compact), as OpenAI's streams do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from epochserve.router.httpfront.codec import Codec
from epochserve.router.httpfront.samples import Experts, Piece

Json = dict[str, Any]


@dataclass(slots=True)
class Choice:
    """A sample's pieces put together (a response sent whole)."""

    index: int
    texts: list[str] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def token_ids(self) -> list[int]:
        return [t for p in self.pieces for t in p.token_ids]

    @property
    def raw_logprobs(self) -> list[float]:
        return [x for p in self.pieces for x in p.raw_logprobs]

    @property
    def routed_experts(self) -> list[Experts]:
        return [r for p in self.pieces for r in p.routed_experts]

    @property
    def prompt_routed_experts(self) -> list[Experts]:
        return [r for p in self.pieces for r in p.prompt_routed_experts]


def gather(pieces: Iterable[Piece], n: int) -> list[Choice]:
    choices = [Choice(i) for i in range(n)]
    for piece in pieces:
        choice = choices[piece.index]
        choice.texts.append(piece.text)
        choice.pieces.append(piece)
        choice.finish_reason = piece.finish_reason or choice.finish_reason
    return choices


def compact(fields: Json) -> Json:
    """`fields` without the unset ones (a streamed chunk's shape)."""
    return {name: value for name, value in fields.items() if value is not None}


def choice_fields(part: Piece | Choice, return_raw_logprobs: bool, return_routed_experts: bool) -> Json:
    """What every choice (or streamed choice) of the OpenAI routes carries besides its text: the
    RL extensions (docs/http.md)."""
    fields: Json = {
        "index": part.index,
        "finish_reason": part.finish_reason,
        "token_ids": part.token_ids,
        "raw_logprobs": part.raw_logprobs if return_raw_logprobs else None,
    }
    if return_routed_experts:
        fields["routed_experts"] = part.routed_experts
        fields["prompt_routed_experts"] = part.prompt_routed_experts
    return fields


def _check(piece: Piece) -> None:
    """One logprob (and with top logprobs, one top-N entry) per token, as the worker sends them."""
    num = len(piece.token_ids)
    if len(piece.logprobs) != num or (piece.top_logprobs and len(piece.top_logprobs) != num):
        raise ValueError(f"sample {piece.index}: {num} tokens, {len(piece.logprobs)} logprobs, "
                         f"{len(piece.top_logprobs)} top logprobs")  # fmt: skip


def _top(codec: Codec, token_id: int, logprob: float) -> Json:
    text = codec.token_text(token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(codec: Codec, pieces: Iterable[Piece]) -> Json:
    """`{content: [{token, logprob, bytes, top_logprobs}], refusal: null}`."""
    content = []
    for piece in pieces:
        tops = piece.top_logprobs or [((), ())] * len(piece.token_ids)
        for token_id, logprob, (top_ids, top_lps) in zip(piece.token_ids, piece.logprobs, tops, strict=True):
            entry = _top(codec, token_id, logprob)
            entry["top_logprobs"] = [_top(codec, t, lp) for t, lp in zip(top_ids, top_lps, strict=True)]
            content.append(entry)
    return {"content": content, "refusal": None}


def completion_logprobs(codec: Codec, pieces: Iterable[Piece], num_top: int, offset: int = 0) -> Json:
    """`{tokens, token_logprobs, top_logprobs, text_offset}`. `offset`: where the first token's text
    starts in the choice's text (a stream's later chunks). Built a list at a time (C-level maps),
    not a token at a time."""
    token_text = codec.token_text
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    tops: list[dict[str, float]] | None = [] if num_top else None
    for piece in pieces:
        _check(piece)
        tokens += map(token_text, piece.token_ids)
        token_logprobs += piece.logprobs
        if tops is not None:
            piece_tops = piece.top_logprobs or [((), ())] * len(piece.token_ids)
            tops += [{token_text(t): lp for t, lp in zip(ids, lps, strict=True)} for ids, lps in piece_tops]
    offsets = list(accumulate(map(len, tokens), initial=offset))
    offsets.pop()  # the end of the last token's text
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def usage(num_prompt: int, num_generated: int) -> Json:
    return {"prompt_tokens": num_prompt, "completion_tokens": num_generated,
            "total_tokens": num_prompt + num_generated}  # fmt: skip
