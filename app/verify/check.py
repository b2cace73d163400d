"""Verify responses: recompute every sampled token's processed logprob under the version the response
names, and summarize the mismatch per version and overall.

Where a response carries the engine's support sizes, the recompute uses them, so a top-p or min-p
boundary that lies within the logits' rounding noise is the engine's at every position; those
positions are counted apart (`boundary`), with the mismatch the rule alone would have shown there.

Where a response of a mixture-of-experts model carries the experts it was routed to
(return_routed_experts), the same recompute also routes every position with transformers' router
and the report gives the routing agreement per version and overall (routing.py). With `replay`, it
recomputes every sample a second time with the returned routing forced (replay.py): the mismatch a
trainer that replays the engine's routing would see, reported beside the free-routing one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from epochserve.app.verify.audit import ResponseRecord, VerifiedSample
from epochserve.app.verify.recompute import Recomputed, Recomputer
from epochserve.app.verify.replay import ReplayError, routing_to_replay
from epochserve.app.verify.routing import RoutingStats, returned_by_position, routing_agreement
from epochserve.app.verify.stats import MismatchStats, mismatch_stats


@dataclass(frozen=True, slots=True)
class BoundaryStats:
    """Positions where the trainer's logits put a boundary on the other side of its threshold."""

    num_positions: int = 0
    max_abs_delta_by_rule: float = 0.0  # there, |engine - rule-only recompute|; 0 with support sizes


@dataclass
class VerifyReport:
    overall: MismatchStats
    by_version: dict[int, MismatchStats]
    mixed_version_responses: list[str] = field(default_factory=list)  # request ids (I1 violations)
    boundary: BoundaryStats = BoundaryStats()
    num_tokens_without_support_sizes: int = 0  # checked by the rule alone (older audit records)
    # samples that carried routed experts, by version (empty when none did)
    routing_by_version: dict[int, RoutingStats] = field(default_factory=dict)
    # replay: the mismatch with the engine's routing forced in the recompute (None without replay)
    replayed: MismatchStats | None = None
    replayed_by_version: dict[int, MismatchStats] = field(default_factory=dict)

    @property
    def routing(self) -> RoutingStats | None:
        """The routing agreement over every version; None when no sample carried routed experts."""
        if not self.routing_by_version:
            return None
        return sum(self.routing_by_version.values(), RoutingStats())

    def to_dict(self) -> dict[str, object]:
        routing = self.routing
        return {
            "overall": self.overall.to_dict(),
            "by_version": {str(v): s.to_dict() for v, s in sorted(self.by_version.items())},
            "mixed_version_responses": self.mixed_version_responses,
            "boundary": asdict(self.boundary),
            "num_tokens_without_support_sizes": self.num_tokens_without_support_sizes,
            "routing": None if routing is None else routing.to_dict(),
            "routing_by_version": {str(v): s.to_dict() for v, s in sorted(self.routing_by_version.items())},
            "replayed": None if self.replayed is None else self.replayed.to_dict(),
            "replayed_by_version": {str(v): s.to_dict() for v, s in sorted(self.replayed_by_version.items())},
        }


def verify(
    records: Iterable[ResponseRecord],
    recomputer: Recomputer,
    tokenize: Callable[[str], list[int]] | None = None,
    progress: Callable[[int], None] | None = None,
    replay: bool = False,
) -> VerifyReport:
    """Records are grouped by version so each version's weights load once. With replay every sample
    must carry its full routing (return_routed_experts), else ReplayError names the request."""
    by_version: dict[int, list[tuple[ResponseRecord, int]]] = {}
    mixed: list[str] = []
    for record in records:
        if len({s.policy_version for s in record.samples}) > 1:
            mixed.append(record.request_id)
        for index, sample in enumerate(record.samples):
            by_version.setdefault(sample.policy_version, []).append((record, index))
    tally = _Tally()
    for version in sorted(by_version):
        for record, index in by_version[version]:
            prompt = list(record.prompt_token_ids)
            if not prompt and tokenize is not None:
                prompt = tokenize(record.prompt_text)
            tally.add(version, record, record.samples[index], prompt, recomputer, replay)
            if progress is not None:
                progress(tally.num_done)
    return tally.report(mixed)


@dataclass
class _Tally:
    """What verify() has gathered so far, sample by sample."""

    pairs: dict[int, list[tuple[tuple[float, ...], list[float]]]] = field(default_factory=dict)
    replayed_pairs: dict[int, list[tuple[tuple[float, ...], list[float]]]] = field(default_factory=dict)
    boundary_deltas: list[float] = field(default_factory=list)
    routing: dict[int, RoutingStats] = field(default_factory=dict)
    num_without_sizes: int = 0
    num_done: int = 0

    def add(
        self,
        version: int,
        record: ResponseRecord,
        sample: VerifiedSample,
        prompt: list[int],
        recomputer: Recomputer,
        replay: bool,
    ) -> None:
        forced = _replay_ids(record.request_id, sample, prompt) if replay and sample.token_ids else None
        trainer = recomputer.recompute(
            version, prompt, sample.token_ids, record.sampling, sample.support_sizes,
            with_router=sample.has_routing, forced_experts=forced,
        )  # fmt: skip
        if sample.has_routing:
            agreement = _routing_of(sample, prompt, trainer)
            self.routing[version] = self.routing.get(version, RoutingStats()) + agreement
        self.pairs.setdefault(version, []).append((sample.processed_logprobs, trainer.logprobs))
        if replay:
            replayed = trainer.replayed_logprobs if trainer.replayed_logprobs is not None else []
            self.replayed_pairs.setdefault(version, []).append((sample.processed_logprobs, replayed))
        self.boundary_deltas += [
            abs(sample.processed_logprobs[i] - trainer.rule_logprobs[i]) for i in trainer.boundary_positions
        ]
        self.num_without_sizes += 0 if sample.support_sizes else len(sample.token_ids)
        self.num_done += 1

    def report(self, mixed: list[str]) -> VerifyReport:
        every = [pair for pairs in self.pairs.values() for pair in pairs]
        replayed = [pair for pairs in self.replayed_pairs.values() for pair in pairs]
        return VerifyReport(
            overall=mismatch_stats(every),
            by_version={v: mismatch_stats(p) for v, p in self.pairs.items()},
            mixed_version_responses=mixed,
            boundary=BoundaryStats(len(self.boundary_deltas), max(self.boundary_deltas, default=0.0)),
            num_tokens_without_support_sizes=self.num_without_sizes,
            routing_by_version=self.routing,
            replayed=mismatch_stats(replayed) if self.replayed_pairs else None,
            replayed_by_version={v: mismatch_stats(p) for v, p in self.replayed_pairs.items()},
        )


def _replay_ids(request_id: str, sample: VerifiedSample, prompt: list[int]) -> np.ndarray:
    try:
        return routing_to_replay(
            len(prompt), sample.prompt_routed_experts, sample.routed_experts, sample.routed_top_k
        )
    except ReplayError as exc:
        raise ReplayError(f"request {request_id}, sample of version {sample.policy_version}: {exc}") from None


def _routing_of(sample: VerifiedSample, prompt: list[int], trainer: Recomputed) -> RoutingStats:
    """The agreement of one sample's returned routing with the trainer's router."""
    assert trainer.router_probs is not None
    positions, returned = returned_by_position(
        len(prompt), sample.prompt_routed_experts, sample.routed_experts, sample.routed_top_k
    )
    return routing_agreement(returned, trainer.router_probs[positions.tolist()])
