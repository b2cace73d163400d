"""Per-worker load as one router sees it, and the reservation a dispatched request holds.

A Reservation adds the request's estimated cost when the request is dispatched, gives tokens back
as they stream out, and returns the rest when the request ends however it ends (release() is
idempotent), so the counters never drift. A request in OUTPUT_MODE_FINAL gives a sample's tokens
back only when the sample ends (its one message carries them all): until then it counts its whole
estimate, an overestimate of what is left that lasts no longer than the sample runs. Routers do
not share load: each balances its own requests, which is enough when clients spread over routers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class WorkerLoad:
    """What this router has outstanding on one worker."""

    tokens: int = 0  # estimated tokens still to process
    seqs: int = 0  # sequences running or queued there
    requests: int = 0
    # seqs by policy version: during a drain=overlap the worker runs two versions, each with
    # max_num_seqs slots of its own, so a bound on sequences applies per version
    seqs_by_version: Counter[int] = field(default_factory=Counter)


class Reservation:
    """One request's share of a worker's load. Created by the dispatcher, released by the flow."""

    def __init__(
        self,
        load: WorkerLoad,
        tokens: int,
        seqs: int,
        on_release: Callable[[], None] | None = None,
        version: int = 0,
    ) -> None:
        self._load = load
        self._tokens = tokens
        self._seqs = seqs
        self._on_release = on_release
        self._version = version
        self.is_released = False
        load.tokens += tokens
        self._add_seqs(seqs)
        load.requests += 1

    def _add_seqs(self, num: int) -> None:
        self._load.seqs += num
        self._load.seqs_by_version[self._version] += num
        if not self._load.seqs_by_version[self._version]:
            del self._load.seqs_by_version[self._version]

    def consume_tokens(self, num_tokens: int) -> None:
        """num_tokens streamed back: that much less work remains (never below zero)."""
        taken = min(num_tokens, self._tokens)
        self._tokens -= taken
        self._load.tokens -= taken

    def finish_sequence(self) -> None:
        """One sample ended on the worker."""
        if self._seqs > 0:
            self._seqs -= 1
            self._add_seqs(-1)

    def release(self) -> None:
        """Return everything still held (idempotent)."""
        if self.is_released:
            return
        self.is_released = True
        self._load.tokens -= self._tokens
        self._add_seqs(-self._seqs)
        self._load.requests -= 1
        self._tokens = self._seqs = 0
        if self._on_release is not None:
            self._on_release()
