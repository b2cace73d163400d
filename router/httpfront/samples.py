"""One sample's tokens as text: detokenized as they arrive, cut at the first stop string.

The tokens a choice reports (`token_ids`, logprobs) are those generated up to and including the
one that completed the stop string: their text is what the client sees plus the dropped match.
Tokens the worker generated after that (it runs on until the router's abort reaches it) are dropped.
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
# What a -inf logprob (a top-N token outside the processed support) is sent as: JSON has no
# infinity, and OpenAI's own servers use this value.
NO_PROBABILITY = -9999.0


def finite(logprobs: Iterable[float]) -> list[float]:
    return [x if math.isfinite(x) else NO_PROBABILITY for x in logprobs]


@dataclass(slots=True)
class Piece:
    """New output of one sample: text, the tokens it came from, and on its last piece why it ended."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    raw_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[Top] = field(default_factory=list)
    # With return_prompt_logprobs, on the sample's first piece: prompt token i's processed logprob
    # for every i >= 1.
    prompt_logprobs: list[float] = field(default_factory=list)
    finish_reason: str | None = None


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

    def add(self, tokens: common_pb2.GenerateChunk) -> Piece | None:
        """The piece these tokens make; None once the sample ended (a stop string matched)."""
        if self.finish_reason is not None:
            return None
        prompt_logprobs = finite(tokens.prompt_logprobs)
        if self.is_score_only:
            return Piece(self.index, prompt_logprobs=prompt_logprobs)
        texts: list[str] = []
        kept = 0
        for token_id in tokens.token_ids:
            shown, stopped = self._matcher.push(self._decoder.step(token_id))
            texts.append(shown)
            kept += 1
            if stopped:
                self.finish_reason = "stop"
                break
        self.num_tokens += kept
        if kept:
            self.last_token_id = tokens.token_ids[kept - 1]
        return Piece(
            self.index,
            "".join(texts),
            list(tokens.token_ids[:kept]),
            finite(tokens.logprobs[:kept]),
            finite(tokens.raw_logprobs[:kept]),
            [(tuple(t.token_ids), tuple(finite(t.logprobs))) for t in tokens.top_logprobs[:kept]],
            prompt_logprobs,
            self.finish_reason,
        )

    def finish(self, reason: int) -> Piece | None:
        """The last piece (the text held back), at the worker's finish; None if already ended."""
        self.has_worker_finished = True
        if self.finish_reason is not None:
            return None
        if self.is_score_only:  # it reached its budget of no tokens
            self.finish_reason = "abort" if reason == common_pb2.FINISH_REASON_ABORT else "length"
            return Piece(self.index, finish_reason=self.finish_reason)
        shown, stopped = self._matcher.push(self._decoder.flush())
        self.finish_reason = "stop" if stopped else finish_reason_name(reason)
        return Piece(
            self.index, shown if stopped else shown + self._matcher.flush(), finish_reason=self.finish_reason
        )
