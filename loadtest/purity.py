"""Purity (I1), freshness (I2) and accounting (I5) checks over every request of a load run.

What each check means, from the client's side:

- mixed_response (I1): one sample named more than one policy version (its chunks, its finish, its
  diagnostics), or the client refused the response because two of its messages did.
- split_group (I1): the n samples of one request are each pure but name different versions.
- stale_after_done (I2): a request sent after this process observed version v DONE carried a
  version below v. "Admitted after DONE" is judged with two times of this process's one clock:
  the request's `sent_at` (taken before the call leaves) and the first observation of DONE (a
  WatchRollout message or a GetPolicy answer, both of which arrive after the coordinator wrote
  DONE, which it writes only after every live router acked v). So sent_at > observed DONE implies
  the router admitted the request after every router had switched to v; it must run on >= v.
  Requests sent between the real DONE and our observation of it are not judged (no false alarm
  is possible, a late violation in that window of milliseconds can be missed). Messages of
  requests that ended in an error are judged too: a stale chunk is stale even if discarded.
- incomplete_response (I5): a response that completed without exactly its n samples 0..n-1.
- unaccounted (I5): a request that neither completed nor ended with an explicit error by the end
  of the run (sent = completed + errors must hold).
- user_group_split: requests that share a user-defined group id (JSONL "group") ran on different
  versions. The cluster promises one version per request, not across requests, so these are
  counted apart and become violations only when the caller asks (`strict_groups`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from epochserve.loadtest.records import MIXED_VERSIONS, RequestRecord, VersionLog

ViolationKind = Literal[
    "mixed_response",
    "split_group",
    "stale_after_done",
    "incomplete_response",
    "unaccounted",
    "user_group_split",
]


@dataclass(frozen=True, slots=True)
class Violation:
    kind: ViolationKind
    request_id: str  # the group id for user_group_split
    detail: str


@dataclass(frozen=True, slots=True)
class PurityResult:
    """What the checker found. `violations` break I1/I2/I5 (or a strict user group)."""

    violations: tuple[Violation, ...]
    user_group_splits: tuple[Violation, ...]  # also in `violations` under strict_groups
    num_checked: int  # requests examined

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for violation in self.violations:
            counts[violation.kind] += 1
        return dict(sorted(counts.items()))


def check_run(
    records: Iterable[RequestRecord], versions: VersionLog, *, strict_groups: bool = False
) -> PurityResult:
    """Check every record; pure function of its inputs (call it after the run has ended)."""
    found: list[Violation] = []
    records = list(records)
    for record in records:
        found.extend(check_request(record, versions))
    splits = check_user_groups(records)
    if strict_groups:
        found.extend(splits)
    return PurityResult(tuple(found), tuple(splits), len(records))


def check_request(record: RequestRecord, versions: VersionLog) -> list[Violation]:
    """The violations of one request (empty when it is pure, fresh and accounted for)."""
    rid = record.request_id
    found: list[Violation] = []
    if record.outcome == "unfinished":
        found.append(Violation("unaccounted", rid, "neither completed nor ended with an error"))
    if record.error_code == MIXED_VERSIONS:
        found.append(Violation("mixed_response", rid, record.error_details))
    per_sample = _versions_per_sample(record)
    for index, named in sorted(per_sample.items()):
        if len(named) > 1:
            found.append(Violation("mixed_response", rid, f"sample {index} named versions {sorted(named)}"))
    pure = {next(iter(v)) for v in per_sample.values() if len(v) == 1}
    if len(pure) > 1:
        found.append(Violation("split_group", rid, f"the {record.n} samples ran on versions {sorted(pure)}"))
    if record.outcome == "completed":
        indexes = sorted(s.sample_index for s in record.samples)
        if indexes != list(range(record.n)):
            found.append(Violation("incomplete_response", rid, f"samples {indexes} of n={record.n}"))
    floor = versions.done_floor(record.sent_at)
    named_all = record.versions
    if floor is not None and named_all and min(named_all) < floor:
        found.append(
            Violation(
                "stale_after_done", rid, f"sent after v{floor} was DONE, named version {min(named_all)}"
            )
        )
    return found


def check_user_groups(records: Iterable[RequestRecord]) -> list[Violation]:
    """User-defined groups (JSONL "group") whose completed requests ran on more than one version."""
    group_versions: dict[str, set[int]] = defaultdict(set)
    for record in records:
        if record.group_id is not None and record.policy_version is not None:
            group_versions[record.group_id].add(record.policy_version)
    return [
        Violation("user_group_split", group, f"requests of the group ran on versions {sorted(named)}")
        for group, named in sorted(group_versions.items())
        if len(named) > 1
    ]


def _versions_per_sample(record: RequestRecord) -> dict[int, set[int]]:
    per_sample: dict[int, set[int]] = {i: set(v) for i, v in record.chunk_versions.items()}
    for sample in record.samples:
        per_sample.setdefault(sample.sample_index, set()).update(
            (sample.policy_version, sample.diagnostics_version)
        )
    return {i: v for i, v in per_sample.items() if v}
