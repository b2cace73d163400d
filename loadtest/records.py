"""What a load run observed: one RequestRecord per request sent, one ObservedRollout per rollout seen
or driven, and the observations of committed versions that the freshness check compares against.

The load driver (driver.py) creates and fills RequestRecords; the observers (observe.py, soak.py)
fill the VersionLog and RolloutRecords; the checker (purity.py) and the statistics (stats.py,
report.py) only read them. Every time is `time.monotonic()` of this process, one clock for all.
"""

from __future__ import annotations

import threading
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["completed", "error", "unfinished"]
RolloutOutcome = Literal["done", "aborted", "failed", "timed_out", "running"]
# Pseudo status of a response the client refused because its messages named two policy versions
# (proto/results.py MixedVersionError): an I1 violation seen by the client, not a server status.
MIXED_VERSIONS = "MIXED_VERSIONS"


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One finished sample of a response, as far as the checks need it."""

    sample_index: int
    policy_version: int  # on its finish message
    diagnostics_version: int  # the worker's own diagnostics trace
    num_tokens: int
    worker_id: str
    attempts: int
    rerun_under_new_version: bool
    num_prompt_tokens: int = 0


@dataclass(slots=True)
class RequestRecord:
    """One request the driver sent. `outcome` stays "unfinished" until it ends one way or the other.

    `sent_at` is taken just before the call is made, so it is earlier than anything the router
    does with the request: it is a lower bound of the request's admission time (purity.py).
    """

    index: int
    request_id: str
    n: int
    max_tokens: int
    group_id: str | None
    sent_at: float
    outcome: Outcome = "unfinished"
    ended_at: float | None = None
    first_token_at: float | None = None
    chunk_versions: dict[int, set[int]] = field(default_factory=dict)  # sample index → versions of its chunks
    samples: list[SampleRecord] = field(default_factory=list)
    num_streamed_tokens: int = 0
    inter_token_seconds: array[float] = field(default_factory=lambda: array("d"))
    error_code: str | None = None  # gRPC status name, or MIXED_VERSIONS
    error_details: str = ""

    @property
    def versions(self) -> set[int]:
        """Every policy version any message of this response named."""
        found: set[int] = set().union(*self.chunk_versions.values())
        for sample in self.samples:
            found.update((sample.policy_version, sample.diagnostics_version))
        return found

    @property
    def policy_version(self) -> int | None:
        """The response's version when it completed naming exactly one; else None."""
        found = self.versions
        return next(iter(found)) if self.outcome == "completed" and len(found) == 1 else None

    @property
    def num_output_tokens(self) -> int:
        return sum(s.num_tokens for s in self.samples)

    @property
    def num_prompt_tokens(self) -> int:
        """The prompt's length (once per request: its samples share one prefill)."""
        return self.samples[0].num_prompt_tokens if self.samples else 0

    @property
    def tpot_seconds(self) -> float | None:
        """Time per output token after the first: (end - first token) / (longest sample - 1)."""
        longest = max((s.num_tokens for s in self.samples), default=0)
        if self.ended_at is None or self.first_token_at is None or longest < 2:
            return None
        return (self.ended_at - self.first_token_at) / (longest - 1)

    @property
    def ttft_seconds(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.sent_at

    @property
    def latency_seconds(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.sent_at


@dataclass(slots=True)
class ObservedRollout:
    """One rollout: driven by soak mode, or seen through the router. Times are when this process
    observed each phase (never the coordinator's clock)."""

    version: int
    drain: str  # "finish", "abort", or "unknown" when not driven here
    source: str
    started_at: float | None = None  # when StartRollout was sent
    committed_at: float | None = None
    done_at: float | None = None
    ended_at: float | None = None  # DONE or ABORTED observed, or the driver gave up
    outcome: RolloutOutcome = "running"
    reason: str = ""
    # worker id → its drain report for this version, as the rollout status last showed it
    # (first_token_seconds, retire_seconds: from the commit; finished/aborted_previous; drain; reason)
    worker_drains: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Marker:
    """A labelled moment on the run's timeline (a worker killed, restarted), for the plots."""

    at: float
    label: str


class VersionLog:
    """When this process first observed each version committed, pinned by the router, and DONE.

    Thread-safe: observers write from the event loop, a soak script may add markers from a thread.
    `done_at` is what the freshness check trusts: the earliest observation of DONE from any source.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done_at: dict[int, float] = {}
        self.pinned_at: dict[int, float] = {}  # the router's GetPolicy first named it
        self.markers: list[Marker] = []

    @property
    def initial(self) -> int | None:
        """The version the router pinned to when this process first asked: serving before the run."""
        with self._lock:
            return min(self.pinned_at, key=self.pinned_at.__getitem__) if self.pinned_at else None

    def observe_done(self, version: int, at: float) -> None:
        with self._lock:
            if version not in self.done_at or at < self.done_at[version]:
                self.done_at[version] = at

    def observe_pinned(self, version: int, at: float) -> None:
        with self._lock:
            self.pinned_at.setdefault(version, at)

    def mark(self, at: float, label: str) -> None:
        with self._lock:
            self.markers.append(Marker(at, label))

    def done_floor(self, at: float) -> int | None:
        """The highest version observed DONE strictly before `at` (None if none was)."""
        with self._lock:
            seen = [v for v, t in self.done_at.items() if t < at]
        return max(seen, default=None)
