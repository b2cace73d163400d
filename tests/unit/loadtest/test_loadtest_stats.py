"""Percentiles, throughput, latencies and the timeline on data whose answers are known by hand."""

from __future__ import annotations

import random

import pytest
from loadkit import completed, failed

from epochserve.loadtest.stats import Summary, latencies, percentile, throughput, timeline


def test_percentiles_interpolate_between_closest_ranks():
    values = [float(v) for v in range(1, 101)]
    random.Random(0).shuffle(values)  # order of the input must not matter
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 3.0], 25) == pytest.approx(1.5)


def test_percentile_refuses_nothing_and_out_of_range():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_of_known_values():
    s = Summary.of([0.1, 0.2, 0.3, 0.4, 1.0])
    assert s is not None
    assert (s.count, s.max) == (5, 1.0)
    assert s.mean == pytest.approx(0.4)
    assert s.p50 == pytest.approx(0.3)
    assert s.p90 == pytest.approx(0.76)  # rank 3.6: 0.4 + 0.6 * (1.0 - 0.4)
    assert Summary.of([]) is None


def test_throughput_counts_completed_requests_and_their_tokens_over_the_window():
    records = [
        completed("a", [1, 1], sent_at=0.0, ended_at=2.0, num_tokens=10),  # 2 samples x 10 tokens
        completed("b", [1], sent_at=1.0, ended_at=4.0, num_tokens=30),
        failed("c", "UNAVAILABLE", sent_at=2.0),  # ends at 3.0; no tokens counted
        completed("d", [1], sent_at=3.0, ended_at=5.0, num_tokens=20),
    ]
    t = throughput(records)
    assert t.window_seconds == 5.0  # first send 0.0 → last end 5.0
    assert (t.num_completed, t.num_output_tokens) == (3, 70)
    assert t.requests_per_second == pytest.approx(0.6)
    assert t.output_tokens_per_second == pytest.approx(14.0)
    assert throughput([]).requests_per_second == 0.0


def test_latencies_come_from_completed_requests_only():
    ok = completed("a", [1], sent_at=1.0, first_token_at=1.25, ended_at=3.0)
    ok.inter_token_seconds.extend([0.1, 0.2])
    bad = failed("b", "ABORTED", sent_at=0.0)
    bad.first_token_at = 0.5
    lat = latencies([ok, bad])
    assert lat.ttft == [0.25] and lat.e2e == [2.0] and list(lat.inter_token) == [0.1, 0.2]


def test_timeline_buckets_ends_and_token_arrivals():
    records = [
        completed("a", [1], sent_at=0.0, ended_at=0.5, num_tokens=5),
        completed("b", [1, 1], sent_at=0.0, ended_at=2.2, num_tokens=5),
        failed("c", "ABORTED", sent_at=1.0),  # ends at 2.0
        completed("d", [1], sent_at=0.0, ended_at=9.0, num_tokens=1),  # past the end: last bucket
    ]
    tl = timeline(records, origin=0.0, end=3.0, bucket_seconds=1.0, token_arrivals=[(0.1, 3), (2.9, 4)])
    assert tl.completed == [1, 0, 2]
    assert tl.output_tokens == [5, 0, 11]
    assert tl.errors == [0, 0, 1]
    assert tl.streamed_tokens == [3, 0, 4]
