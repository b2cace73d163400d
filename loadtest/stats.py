"""The numbers of a load report: percentiles, throughput, and throughput over time.

Pure functions of the records (records.py); no I/O. Conventions, stated once:
- percentiles interpolate linearly between the closest ranks (numpy's default "linear"): of
  1..100, p50 = 50.5, p90 = 90.1, p99 = 99.01.
- the measured window runs from the first request sent to the last request ended; throughput is
  what completed in it divided by its length (requests/s, output tokens/s of completed responses).
- TTFT: from sending to the first token of any sample (output mode FINAL: to the first whole
  sample). End-to-end: from sending to the last message.
- inter-token latency: within one sample, the gap between two consecutive chunks divided by the
  later chunk's token count, counted once per token (so percentiles weigh tokens, not chunks);
  none in FINAL, where a sample is one message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from epochserve.loadtest.records import RequestRecord

PERCENTILES = (50.0, 90.0, 99.0)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of `values`, linear interpolation; ValueError if empty."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """Distribution of one latency, seconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        if not values:
            return None
        p50, p90, p99 = (percentile(values, q) for q in PERCENTILES)
        return cls(len(values), sum(values) / len(values), p50, p90, p99, max(values))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Throughput:
    window_seconds: float  # first send → last end
    num_completed: int
    num_output_tokens: int  # of completed responses, all samples
    requests_per_second: float
    output_tokens_per_second: float
    num_input_tokens: int = 0  # prompt tokens of completed responses, once per request
    input_tokens_per_second: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def throughput(records: Iterable[RequestRecord]) -> Throughput:
    """Completed requests and their output tokens over the measured window (module docstring)."""
    records = list(records)
    starts = [r.sent_at for r in records]
    ends = [r.ended_at for r in records if r.ended_at is not None]
    window = (max(ends) - min(starts)) if starts and ends else 0.0
    completed = [r for r in records if r.outcome == "completed"]
    tokens = sum(r.num_output_tokens for r in completed)
    prompts = sum(r.num_prompt_tokens for r in completed)
    rate = (lambda x: x / window) if window > 0 else (lambda x: 0.0)
    return Throughput(
        window, len(completed), tokens, rate(len(completed)), rate(tokens), prompts, rate(prompts)
    )


@dataclass(frozen=True, slots=True)
class Latencies:
    ttft: list[float]
    inter_token: list[float]
    tpot: list[float]  # time per output token, one per request
    e2e: list[float]


def latencies(records: Iterable[RequestRecord]) -> Latencies:
    """The latency samples of completed requests (errors would mix a different population in)."""
    ttft: list[float] = []
    inter_token: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    for record in records:
        if record.outcome != "completed":
            continue
        if record.ttft_seconds is not None:
            ttft.append(record.ttft_seconds)
        if record.latency_seconds is not None:
            e2e.append(record.latency_seconds)
        if record.tpot_seconds is not None:
            tpot.append(record.tpot_seconds)
        inter_token.extend(record.inter_token_seconds)
    return Latencies(ttft, inter_token, tpot, e2e)


@dataclass(frozen=True, slots=True)
class Timeline:
    """Per-bucket counts from `origin`: requests completed and errors by end time, output tokens of
    completed responses by end time, streamed tokens by arrival time."""

    origin: float
    bucket_seconds: float
    completed: list[int]
    errors: list[int]
    output_tokens: list[int]
    streamed_tokens: list[int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def timeline(
    records: Iterable[RequestRecord],
    origin: float,
    end: float,
    bucket_seconds: float = 1.0,
    token_arrivals: Sequence[tuple[float, int]] = (),
) -> Timeline:
    """Bucket the run from `origin` to `end`; events outside the span land in the edge buckets."""
    num = max(1, math.ceil((end - origin) / bucket_seconds))
    result = Timeline(origin, bucket_seconds, [0] * num, [0] * num, [0] * num, [0] * num)

    def bucket(at: float) -> int:
        return min(num - 1, max(0, int((at - origin) // bucket_seconds)))

    for record in records:
        if record.ended_at is None:
            continue
        if record.outcome == "completed":
            result.completed[bucket(record.ended_at)] += 1
            result.output_tokens[bucket(record.ended_at)] += record.num_output_tokens
        else:
            result.errors[bucket(record.ended_at)] += 1
    for at, count in token_arrivals:
        result.streamed_tokens[bucket(at)] += count
    return result
