"""Verify responses: recompute every sampled token's processed logprob under the version the response
names, and summarize the mismatch per version and overall."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from epochserve.controlplane.verify.audit import ResponseRecord
from epochserve.controlplane.verify.recompute import Recomputer
from epochserve.controlplane.verify.stats import MismatchStats, mismatch_stats


@dataclass
class VerifyReport:
    overall: MismatchStats
    by_version: dict[int, MismatchStats]
    mixed_version_responses: list[str] = field(default_factory=list)  # request ids (I1 violations)

    def to_dict(self) -> dict[str, object]:
        return {
            "overall": self.overall.to_dict(),
            "by_version": {str(v): s.to_dict() for v, s in sorted(self.by_version.items())},
            "mixed_version_responses": self.mixed_version_responses,
        }


def verify(
    records: Iterable[ResponseRecord],
    recomputer: Recomputer,
    tokenize: Callable[[str], list[int]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Records are grouped by version so each version's weights load once."""
    by_version: dict[int, list[tuple[ResponseRecord, int]]] = {}
    mixed: list[str] = []
    for record in records:
        versions = {s.policy_version for s in record.samples}
        if len(versions) > 1:
            mixed.append(record.request_id)
        for index, sample in enumerate(record.samples):
            by_version.setdefault(sample.policy_version, []).append((record, index))
    pairs_by_version: dict[int, list[tuple[tuple[float, ...], list[float]]]] = {}
    done = 0
    for version in sorted(by_version):
        for record, index in by_version[version]:
            sample = record.samples[index]
            prompt = list(record.prompt_token_ids)
            if not prompt and tokenize is not None:
                prompt = tokenize(record.prompt_text)
            trainer = recomputer.processed_logprobs(version, prompt, sample.token_ids, record.sampling)
            pairs_by_version.setdefault(version, []).append((sample.processed_logprobs, trainer))
            done += 1
            if progress is not None:
                progress(done)
    all_pairs = [pair for pairs in pairs_by_version.values() for pair in pairs]
    return VerifyReport(
        overall=mismatch_stats(all_pairs),
        by_version={v: mismatch_stats(p) for v, p in pairs_by_version.items()},
        mixed_version_responses=mixed,
    )
