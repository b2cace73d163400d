"""One sample's tokens as text: detokenized as they arrive, cut at the first stop string.

The tokens a choice reports (`token_ids`, logprobs) are those generated up to and including the
one that completed the stop string: their text is what the client sees plus the dropped match.
Tokens the worker generated after that (it runs on until the router's abort reaches it) are dropped.
The tokens of a sample that arrived together are decoded in one call; only a chunk that completes a
stop string is replayed token by token, to find the token that completed it.
A score-only sample (max_tokens 0: the prompt's logprobs, nothing generated) reports none of the
one token the engine had to sample while it scored the prompt.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from epochserve.proto.results import finish_reason_name
from epochserve.proto.v1 import common_pb2
from epochserve.router.httpfront.detokenize import Decode, IncrementalDecoder, StopMatcher

Top = tuple[tuple[int, ...], tuple[float, ...]]  # the N most likely token ids, their processed logprobs
Experts = list[int]  # one position's routed experts: num_moe_layers * top_k ids, layer-major
# What a -inf logprob (a top-N token outside the processed support) is sent as: JSON has no
# infinity, and OpenAI's own servers use this value.
NO_PROBABILITY = -9999.0


def finite(logprobs: Iterable[float]) -> list[float]:
    values = list(logprobs)
    if values and min(values) == -math.inf:  # rare: only then a pass in Python
        return [x if math.isfinite(x) else NO_PROBABILITY for x in values]
    return values


@dataclass(slots=True)
class Piece:
    """New output of one sample: text, the tokens it came from, and on its last piece why it ended.
    Everything of the sample that arrived together (one or more chunks) makes one piece."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    raw_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[Top] = field(default_factory=list)
    # With return_prompt_logprobs, on the sample's first piece: prompt token i's processed logprob
    # for every i >= 1.
    prompt_logprobs: list[float] = field(default_factory=list)
    # With return_routed_experts: per token in token_ids, and (on the sample's first piece) per
    # prompt position (common.proto RoutedExperts).
    routed_experts: list[Experts] = field(default_factory=list)
    prompt_routed_experts: list[Experts] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.token_ids or self.text or self.finish_reason or self.prompt_logprobs
                    or self.prompt_routed_experts)  # fmt: skip

    def keep(self, num_tokens: int) -> None:
        """Drop the tokens after the first `num_tokens` (they came after a stop string)."""
        for name in ("token_ids", "logprobs", "raw_logprobs", "top_logprobs", "routed_experts"):
            del getattr(self, name)[num_tokens:]


def piece_of(index: int, chunk: common_pb2.GenerateChunk) -> Piece:
    """A chunk's tokens and what comes with them (a sample's chunks that arrived together, merged
    into one: run.py) as one piece without text. Each field is converted to a list once."""
    piece = Piece(index, token_ids=list(chunk.token_ids), logprobs=finite(chunk.logprobs))
    if chunk.raw_logprobs:
        piece.raw_logprobs = finite(chunk.raw_logprobs)
    if chunk.top_logprobs:
        piece.top_logprobs = [(tuple(t.token_ids), tuple(finite(t.logprobs))) for t in chunk.top_logprobs]
    if chunk.prompt_logprobs:
        piece.prompt_logprobs = finite(chunk.prompt_logprobs)
    if chunk.routed_top_k:
        piece.routed_experts = [list(r.expert_ids) for r in chunk.routed_experts]
        piece.prompt_routed_experts = [list(r.expert_ids) for r in chunk.prompt_routed_experts]
    return piece


class SampleText:
    def __init__(self, index: int, decode: Decode, stops: Sequence[str], is_score_only: bool = False) -> None:
        self.index = index
        self.is_score_only = is_score_only
        self._decoder = IncrementalDecoder(decode)
        self._matcher = StopMatcher(stops)
        self.finish_reason: str | None = None
        self.num_tokens = 0
        self.last_token_id: int | None = None  # the last token reported (an end of turn is one)
        self.has_worker_finished = False  # the worker's finish came (after a stop string: later)

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the sample; None when it ended otherwise (or not yet)."""
        return self._matcher.matched

    def add(self, chunk: common_pb2.GenerateChunk, finish: int | None = None) -> Piece | None:
        """The piece this chunk makes (the sample's new tokens; with `finish`, the worker's finish
        reason when the sample's finish came with them: its last piece); None once the sample ended
        at a stop string."""
        if finish is not None:
            self.has_worker_finished = True
        if self.finish_reason is not None:
            return None
        piece = piece_of(self.index, chunk)
        if self.is_score_only:  # it reached its budget of no tokens: none is reported
            piece.keep(0)
            if finish is not None:
                self.finish_reason = "abort" if finish == common_pb2.FINISH_REASON_ABORT else "length"
        else:
            self._add_text(piece, finish)
        piece.finish_reason = self.finish_reason
        return piece

    def _add_text(self, piece: Piece, finish: int | None) -> None:
        decoder_mark, matcher_mark = self._decoder.mark(), self._matcher.mark()
        piece.text, stopped = self._matcher.push(self._decoder.extend(piece.token_ids))
        kept = len(piece.token_ids)
        if stopped and kept > 1:  # which token completed the stop string: replay one at a time
            self._decoder.rewind(decoder_mark)
            self._matcher.rewind(matcher_mark)
            piece.text, kept, stopped = self._until_stop(piece.token_ids)
        piece.keep(kept)
        self.num_tokens += kept
        if kept:
            self.last_token_id = piece.token_ids[-1]
        if stopped:
            self.finish_reason = "stop"
        elif finish is not None:  # the text held back, at the worker's finish
            shown, stopped = self._matcher.push(self._decoder.flush())
            piece.text += shown if stopped else shown + self._matcher.flush()
            self.finish_reason = "stop" if stopped else finish_reason_name(finish)

    def _until_stop(self, token_ids: list[int]) -> tuple[str, int, bool]:
        """(text shown, tokens kept, whether a stop string matched), token by token."""
        texts = []
        for kept, token_id in enumerate(token_ids, 1):
            shown, stopped = self._matcher.push(self._decoder.step(token_id))
            texts.append(shown)
            if stopped:
                return "".join(texts), kept, True
        return "".join(texts), len(token_ids), False
