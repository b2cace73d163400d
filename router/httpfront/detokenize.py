"""Token ids → text, one token at a time, and `stop` strings cut out of that text (pure Python).

IncrementalDecoder emits text only once it is whole: a token that ends inside a multi-byte
character decodes to U+FFFD, so nothing is emitted until a later token completes it. It decodes a
short window (the tokens since the last emitted text, plus the ones before it for context) rather
than the whole sample each time: a tokenizer may decode a token differently depending on the token
before it (a leading space), and a window keeps each call's cost constant. It takes the tokens that
arrived together in one call (one decode per streamed chunk, not per token).

StopMatcher holds back the tail that could still be the start of a stop string, so a streamed
response never shows part of a stop string that a later token completes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]
REPLACEMENT = "\ufffd"  # what a byte-level tokenizer decodes an incomplete UTF-8 sequence to


class IncrementalDecoder:
    def __init__(self, decode: Decode) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._context = 0  # start of the window: tokens before `_emitted` give context
        self._emitted = 0  # tokens whose text was emitted
        self._before = ""  # the window's emitted part decoded: decode(ids[context:emitted])

    def step(self, token_id: int) -> str:
        """The new text `token_id` completes ("" while a character is still incomplete)."""
        return self.extend((token_id,))

    def extend(self, token_ids: Sequence[int]) -> str:
        """The new text these tokens complete, decoded in one call (a streamed chunk, or a whole
        sample). When the last of them ends inside a character, the text up to the tokens before
        that character is emitted and the rest waits for the tokens that complete it."""
        self._ids.extend(token_ids)
        # A character spans at most 4 bytes: backing off 3 tokens finds its start in byte-level vocabularies.
        for end in range(len(self._ids), max(self._emitted, len(self._ids) - 4), -1):
            text = self._decode(self._ids[self._context : end])
            if len(text) > len(self._before) and not text.endswith(REPLACEMENT):
                return self._emit(text, end)
        return ""

    def flush(self) -> str:
        """Whatever text is still held back (the sample ended inside a character: U+FFFD)."""
        if self._emitted == len(self._ids):
            return ""
        return self._emit(self._decode(self._ids[self._context :]), len(self._ids))

    def mark(self) -> tuple[int, int, int, str]:
        """The state to rewind() to (a stop string: replay a chunk token by token)."""
        return len(self._ids), self._context, self._emitted, self._before

    def rewind(self, mark: tuple[int, int, int, str]) -> None:
        num_ids, self._context, self._emitted, self._before = mark
        del self._ids[num_ids:]

    def _emit(self, text: str, end: int) -> str:
        new = text[len(self._before) :]
        had_context = self._emitted > self._context
        self._context, self._emitted = self._emitted, end
        if not had_context:  # the window had no context: `text` is the new window's decoding
            self._before = text
        else:
            self._before = self._decode(self._ids[self._context : end]) if end > self._context else ""
        return new


class StopMatcher:
    """Feed it text as it comes; it returns what may be shown, and whether a stop string matched
    (the match and everything after it are dropped)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._pending = ""  # text not shown yet: never contains a whole stop string
        self.matched: str | None = None  # the stop string that ended the text (the earliest one)

    def push(self, text: str) -> tuple[str, bool]:
        self._pending += text
        hits = [(at, s) for s in self.stops if (at := self._pending.find(s)) >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            shown, self._pending = self._pending[:at], ""
            return shown, True
        cut = len(self._pending) - self._hold
        if cut <= 0:
            return "", False
        shown, self._pending = self._pending[:cut], self._pending[cut:]
        return shown, False

    def mark(self) -> tuple[str, str | None]:
        return self._pending, self.matched

    def rewind(self, mark: tuple[str, str | None]) -> None:
        self._pending, self.matched = mark

    def flush(self) -> str:
        """The held-back tail, at the end of a sample that matched no stop string."""
        shown, self._pending = self._pending, ""
        return shown
