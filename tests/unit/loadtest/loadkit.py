"""Crafted load-test records for the unit tests: responses as the driver would have recorded them."""

from __future__ import annotations

from epochserve.loadtest.records import RequestRecord, SampleRecord


def sample(index: int, version: int, num_tokens: int = 4, *, diagnostics_version: int | None = None,
           worker: str = "w0", attempts: int = 1, rerun: bool = False) -> SampleRecord:  # fmt: skip
    """A finished sample of a 10-token prompt."""
    return SampleRecord(
        index, version, version if diagnostics_version is None else diagnostics_version, num_tokens, worker,
        attempts, rerun, 10,
    )  # fmt: skip


def completed(
    rid: str,
    versions: list[int],
    *,
    sent_at: float = 0.0,
    ended_at: float | None = None,
    first_token_at: float | None = None,
    num_tokens: int = 4,
    group: str | None = None,
) -> RequestRecord:
    """A completed response: one sample per entry of `versions` (its chunks and finish name it)."""
    record = RequestRecord(0, rid, len(versions), num_tokens, group, sent_at)
    for index, version in enumerate(versions):
        record.chunk_versions[index] = {version}
        record.samples.append(sample(index, version, num_tokens))
    record.outcome = "completed"
    record.ended_at = sent_at + 1.0 if ended_at is None else ended_at
    record.first_token_at = sent_at + 0.1 if first_token_at is None else first_token_at
    return record


def failed(rid: str, code: str, *, sent_at: float = 0.0, chunk_versions: dict[int, set[int]] | None = None):
    """A request that ended with an explicit error (after streaming chunks of `chunk_versions`)."""
    record = RequestRecord(0, rid, 1, 4, None, sent_at)
    record.outcome, record.ended_at, record.error_code = "error", sent_at + 1.0, code
    record.chunk_versions = chunk_versions or {}
    return record
