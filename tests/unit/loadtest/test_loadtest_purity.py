"""The purity checker on crafted responses: each broken invariant is flagged with its kind, and
legitimate runs (versions moving between requests, a request sent before DONE) are not."""

from __future__ import annotations

from loadkit import completed, failed, sample

from epochserve.loadtest.purity import check_request, check_run
from epochserve.loadtest.records import MIXED_VERSIONS, RequestRecord, VersionLog


def kinds(record: RequestRecord, versions: VersionLog | None = None) -> list[str]:
    return [v.kind for v in check_request(record, versions or VersionLog())]


def test_a_pure_fresh_complete_response_has_no_violation():
    assert kinds(completed("ok", [3, 3, 3, 3])) == []


def test_one_sample_naming_two_versions_is_a_mixed_response():
    record = completed("mixed", [1])
    record.chunk_versions[0] = {1, 2}  # its chunks came from v1 and v2
    assert kinds(record) == ["mixed_response"]
    diag = completed("diag", [1])
    diag.samples[0] = sample(0, 1, diagnostics_version=2)  # the worker's trace disagrees
    assert kinds(diag) == ["mixed_response"]


def test_a_response_the_client_refused_as_mixed_is_flagged():
    record = failed("refused", MIXED_VERSIONS, chunk_versions={0: {4}})
    record.error_details = "policy version 5 after 4 in one response"
    [violation] = check_request(record, VersionLog())
    assert violation.kind == "mixed_response" and "5 after 4" in violation.detail


def test_the_samples_of_one_request_on_two_versions_split_the_group():
    [violation] = check_request(completed("split", [2, 2, 3, 2]), VersionLog())
    assert violation.kind == "split_group" and violation.request_id == "split"
    assert "[2, 3]" in violation.detail


def test_a_version_below_one_observed_done_before_sending_is_stale():
    versions = VersionLog()
    versions.observe_done(0, 0.0)
    versions.observe_done(5, 10.0)
    assert kinds(completed("stale", [4, 4], sent_at=10.5), versions) == ["stale_after_done"]
    # chunks streamed before an error are judged too
    errored = failed("stale-chunks", "UNAVAILABLE", sent_at=11.0, chunk_versions={0: {4}})
    assert kinds(errored, versions) == ["stale_after_done"]


def test_before_done_was_observed_any_version_at_or_above_the_last_done_is_fresh():
    versions = VersionLog()
    versions.observe_done(4, 1.0)
    versions.observe_done(5, 10.0)
    assert kinds(completed("old-but-early", [4], sent_at=9.99), versions) == []
    assert kinds(completed("same-instant", [4], sent_at=10.0), versions) == []  # not strictly after
    assert kinds(completed("new", [5], sent_at=10.01), versions) == []
    assert kinds(completed("below-4", [3], sent_at=9.0), versions) == ["stale_after_done"]


def test_the_earliest_observation_of_done_is_the_one_judged():
    versions = VersionLog()
    versions.observe_done(2, 7.0)  # GetPolicy
    versions.observe_done(2, 5.0)  # WatchRollout saw it first
    versions.observe_done(2, 9.0)
    assert versions.done_at == {2: 5.0}
    assert kinds(completed("r", [1], sent_at=6.0), versions) == ["stale_after_done"]


def test_unfinished_and_incomplete_requests_break_accounting():
    hanging = RequestRecord(0, "hang", 1, 4, None, 0.0)
    assert kinds(hanging) == ["unaccounted"]
    short = completed("short", [1, 1, 1])
    short.n = 4  # asked for 4 samples, got 3
    assert kinds(short) == ["incomplete_response"]
    assert kinds(failed("aborted", "ABORTED")) == []  # an explicit error is accounted for


def test_user_groups_split_across_requests_are_counted_and_fail_only_when_strict():
    records = [
        completed("a", [1], group="g1"),
        completed("b", [2], group="g1"),
        completed("c", [2], group="g2"),
        completed("d", [2], group="g2"),
        failed("e", "ABORTED"),
    ]
    lenient = check_run(records, VersionLog())
    assert lenient.violations == () and [v.request_id for v in lenient.user_group_splits] == ["g1"]
    strict = check_run(records, VersionLog(), strict_groups=True)
    assert strict.by_kind() == {"user_group_split": 1} and strict.num_checked == 5


def test_check_run_collects_every_kind_over_a_run():
    versions = VersionLog()
    versions.observe_done(3, 2.0)
    records = [completed("ok", [3], sent_at=3.0), completed("split", [3, 4], sent_at=3.0)]
    records.append(completed("stale", [2], sent_at=3.0))
    records.append(RequestRecord(0, "hang", 1, 4, None, 3.0))
    result = check_run(records, versions)
    assert result.by_kind() == {"split_group": 1, "stale_after_done": 1, "unaccounted": 1}
    assert {v.request_id for v in result.violations} == {"split", "stale", "hang"}
