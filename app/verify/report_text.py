"""`epochctl verify`'s human-readable report: a mismatch table per version, then what it needs saying
(boundary positions, routing agreement, replay, versions mixed or retired). Returns text; the CLI
prints it."""

from __future__ import annotations

from epochserve.app.verify.check import VerifyReport
from epochserve.app.verify.engine_audit import EngineAuditReport
from epochserve.app.verify.routing import NEAR_TIE, RoutingStats
from epochserve.app.verify.stats import MismatchStats

HEADERS = ("samples", "tokens", "mean|Δ|", "max|Δ|", "KL", "clip(tok)", "clip(seq)")


def mismatch_table(rows: list[tuple[str, MismatchStats]]) -> list[str]:
    lines = [f"{'version':14} " + " ".join(f"{h:>10}" for h in HEADERS)]
    for name, s in rows:
        lines.append(f"{name:14} {s.num_sequences:10d} {s.num_tokens:10d} {s.mean_abs_delta:10.2e} "
                     f"{s.max_abs_delta:10.2e} {s.kl_new_old:10.2e} {s.token_clip_rate:10.2%} "
                     f"{s.sequence_clip_rate:10.2%}")  # fmt: skip
    return lines


def _rows(
    suffix: str, overall: MismatchStats, by_version: dict[int, MismatchStats]
) -> list[tuple[str, MismatchStats]]:
    return [(f"all{suffix}", overall), *((f"v{v}{suffix}", s) for v, s in sorted(by_version.items()))]


def format_transformers_report(report: VerifyReport, ok: bool) -> str:
    """The recompute with transformers; with replay, the replayed rows follow the free-routing ones."""
    rows = _rows("", report.overall, report.by_version)
    if report.replayed is not None:
        rows += _rows(" replayed", report.replayed, report.replayed_by_version)
    lines = mismatch_table(rows)
    if report.replayed is not None:
        lines.append("replayed: recomputed with the engine's routed experts forced at every MoE layer and "
                     "position; the thresholds apply to these rows")  # fmt: skip
    if report.boundary.num_positions:
        lines.append(f"top-p/min-p boundary within the logits' noise at {report.boundary.num_positions} "
                     f"position(s): checked with the engine's support sizes (the rule alone would differ "
                     f"there by up to {report.boundary.max_abs_delta_by_rule:.2e})")  # fmt: skip
    if report.num_tokens_without_support_sizes:
        lines.append(f"{report.num_tokens_without_support_sizes} token(s) without support sizes: "
                     f"checked by the boundary rule alone")  # fmt: skip
    if report.routing is not None:
        lines.append(routing_line("routing", report.routing))
        lines += [routing_line(f"  v{v}", stats) for v, stats in sorted(report.routing_by_version.items())]
    if report.mixed_version_responses:
        lines.append(f"responses mixing versions: {report.mixed_version_responses}")
    lines.append("PASS" if ok else "FAIL")
    return "\n".join(lines)


def format_engine_report(report: EngineAuditReport, ok: bool) -> str:
    """The re-scoring on the serving engine."""
    lines = ["re-scored on the serving engine (prompt_logprobs under the sample's version)"]
    lines += mismatch_table(_rows("", report.overall, report.by_version))
    if report.retired:
        shown = ", ".join(report.retired[:5]) + (", ..." if len(report.retired) > 5 else "")
        lines.append(f"{len(report.retired)} sample(s) not re-scored: the cluster serves a newer version "
                     f"than theirs ({shown})")  # fmt: skip
    lines += [f"scoring failed: {error}" for error in report.errors]
    if report.mixed_version_responses:
        lines.append(f"responses mixing versions: {report.mixed_version_responses}")
    lines.append("PASS" if ok else "FAIL")
    return "\n".join(lines)


def routing_line(name: str, stats: RoutingStats) -> str:
    return (f"{name}: {stats.agreement_rate:.4%} of {stats.num_pairs} (position, MoE layer) routings agree "
            f"with transformers' router; {stats.num_near_ties} differ at a near-tie (within {NEAR_TIE:g}), "
            f"{stats.num_mismatches} without one")  # fmt: skip
