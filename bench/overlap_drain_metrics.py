"""The numbers bench/overlap_drain.py reports, computed from one run's records (pure, no I/O).

Definitions, stated once. Times are time.monotonic() of the bench process; rates output tokens/s.
- series: tokens streamed to the client per BUCKET_SECONDS (the load tester counts arrivals per
  0.1 s tick, all requests together). Tokens of requests later aborted count here: the worker
  computed them, so for "was the GPU busy" they are work.
- measured window: from the run's start + warmup to when sending stopped (the last rollout was
  followed to DONE before that).
- goodput: tokens streamed in the window, less those of requests that ended in an error (their
  output was thrown away: a drain=abort retirement, a drain deadline). Such a request's tokens are
  spread evenly over its first token → end, since arrivals are not kept per request.
- steady rate: the goodput of the run without rollouts (same load, same cluster).
- drain window of a rollout: from its commit, as observed here, to its DONE, as observed here.
- idle seconds: in the drain window, the length of the buckets whose rate is below 50% of the
  steady rate (a whole bucket counts when its rate is; the window's edges cut the end buckets).
- lost seconds: ∫ max(0, 1 - rate/steady) dt over the drain window: the throughput the window
  missed, in seconds of a fully busy worker. A batch shrinking to stragglers shows here before it
  shows in idle seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from epochserve.loadtest.driver import TOKEN_TICK_SECONDS
from epochserve.loadtest.records import ObservedRollout, RequestRecord
from epochserve.loadtest.stats import percentile

BUCKET_SECONDS = 0.5
IDLE_FRACTION = 0.5  # a bucket below this share of the steady rate is idle


@dataclass(frozen=True, slots=True)
class Series:
    """Streamed tokens per bucket: bucket i covers [origin + i*width, origin + (i+1)*width)."""

    origin: float
    width: float
    tokens: tuple[int, ...]

    @classmethod
    def of(cls, token_ticks: Mapping[int, int], origin: float, width: float = BUCKET_SECONDS) -> Series:
        """Rebucket the load tester's ticks (RunState.token_ticks: tick index → tokens)."""
        per_bucket = round(width / TOKEN_TICK_SECONDS)
        num = max(token_ticks, default=-1) // per_bucket + 1
        counts = [0] * num
        for tick, count in token_ticks.items():
            counts[tick // per_bucket] += count
        return cls(origin, per_bucket * TOKEN_TICK_SECONDS, tuple(counts))

    def spans(self, start: float, end: float) -> Iterable[tuple[float, float]]:
        """(seconds of [start, end) inside the bucket, the bucket's rate) for every bucket it meets."""
        for i, count in enumerate(self.tokens):
            low = self.origin + i * self.width
            inside = min(end, low + self.width) - max(start, low)
            if inside > 0:
                yield inside, count / self.width
        tail = end - max(start, self.origin + len(self.tokens) * self.width)
        if tail > 0:  # nothing arrived after the last bucket: a rate of 0
            yield tail, 0.0

    def tokens_in(self, start: float, end: float) -> float:
        return sum(seconds * rate for seconds, rate in self.spans(start, end))


def wasted_tokens_in(records: Iterable[RequestRecord], start: float, end: float) -> float:
    """Tokens streamed in [start, end) by requests that ended in an error (evenly spread)."""
    total = 0.0
    for r in records:
        if r.outcome != "error" or not r.num_streamed_tokens or r.first_token_at is None:
            continue
        assert r.ended_at is not None
        span = max(r.ended_at - r.first_token_at, 1e-9)
        inside = max(0.0, min(end, r.ended_at) - max(start, r.first_token_at))
        total += r.num_streamed_tokens * min(1.0, inside / span)
    return total


def goodput(series: Series, records: list[RequestRecord], start: float, end: float) -> float:
    """Useful output tok/s over [start, end) (module docstring)."""
    return (series.tokens_in(start, end) - wasted_tokens_in(records, start, end)) / (end - start)


def idle_seconds(series: Series, start: float, end: float, steady: float) -> float:
    return sum(seconds for seconds, rate in series.spans(start, end) if rate < IDLE_FRACTION * steady)


def lost_seconds(series: Series, start: float, end: float, steady: float) -> float:
    return sum(seconds * max(0.0, 1.0 - rate / steady) for seconds, rate in series.spans(start, end))


def rollout_row(
    rollout: ObservedRollout, series: Series, records: list[RequestRecord], steady: float, origin: float
) -> dict:
    """One rollout's numbers: drain report of its (one) worker, drain window, idle, waste."""
    (report,) = rollout.worker_drains.values()  # the bench runs one worker
    row = {
        "version": rollout.version,
        "outcome": rollout.outcome,
        "commit_at": None if rollout.committed_at is None else rollout.committed_at - origin,
        "commit_to_done_s": _between(rollout.committed_at, rollout.done_at),
        "drain_applied": report.get("drain"),
        "retire_s": report.get("retire_seconds"),  # the worker: commit → last v-1 sequence ended
        "first_new_token_s": report.get("first_token_seconds"),  # the worker: commit → first v token
        "finished_previous": report.get("finished_previous"),
        "aborted_previous": report.get("aborted_previous"),
        "reason": report.get("reason", "") or rollout.reason,
        # a request sent when the commit was seen (overlap_drain.py, one_token_probe): its time to
        # first token, and the version that served it
        "probe_ttft_s": report.get("probe_ttft_s"),
        "probe_version": report.get("probe_version"),
        # a request waiting at the router for v since the rollout started: its first token, from
        # the commit as observed here (the soak driver's poll: later than the worker's commit)
        "held_first_token_s": _between(rollout.committed_at, report.get("held_first_token_at")),
        "held_version": report.get("held_version"),
    }
    if rollout.committed_at is not None and rollout.done_at is not None:
        start, end = rollout.committed_at, rollout.done_at
        row["idle_s"] = idle_seconds(series, start, end, steady)
        row["lost_s"] = lost_seconds(series, start, end, steady)
        row["wasted_tokens"] = sum(
            r.num_streamed_tokens
            for r in records
            if r.outcome == "error" and r.ended_at is not None and start <= r.ended_at <= end + 1.0
        )
    return row


def ttft_p99(records: list[RequestRecord]) -> float | None:
    values = [r.ttft_seconds for r in records if r.outcome == "completed" and r.ttft_seconds is not None]
    return percentile(values, 99.0) if values else None


def _between(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a
