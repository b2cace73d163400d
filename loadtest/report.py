"""The report of a load run: one JSON document (`build_report`), rendered as Markdown, and written
with the plots and one line per request (`write_report`).

JSON layout (schema 1), times in seconds relative to the run's start unless named `*_unix`:
counts {sent, completed, errors, unfinished, skipped, accounted}, throughput, latency_seconds
{ttft, inter_token, e2e: {count, mean, p50, p90, p99, max}}, errors_by_status,
responses_by_version, samples_by_worker, retries, rollouts, versions {pinned_at, done_at},
markers, purity {num_checked, num_violations, by_kind, violations, user_group_splits}, timeline,
config, notes. The admin token is never written.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from epochserve.loadtest.purity import PurityResult, Violation, check_run
from epochserve.loadtest.records import RequestRecord
from epochserve.loadtest.render import render_markdown
from epochserve.loadtest.runner import RunResult
from epochserve.loadtest.stats import Summary, latencies, throughput, timeline

SCHEMA_VERSION = 1
MAX_LISTED_VIOLATIONS = 100  # the JSON lists this many; counts cover all


def check_and_write(result: RunResult) -> tuple[dict[str, Any], dict[str, Path]]:
    """Check every request (purity.py), build the report and write it to the config's out_dir."""
    purity = check_run(result.state.records, result.versions, strict_groups=result.config.strict_groups)
    report = build_report(result, purity)
    paths = write_report(report, result.state.records, result.state.origin, result.config.out_dir)
    return report, paths


def build_report(result: RunResult, purity: PurityResult) -> dict[str, Any]:
    """The report as a JSON-ready dict (module docstring for the layout)."""
    state, origin = result.state, result.state.origin
    records = state.records
    end = max([result.ended_at, *(r.ended_at for r in records if r.ended_at is not None)])
    return {
        "schema": SCHEMA_VERSION,
        "started_unix": result.started_unix,
        "duration_seconds": round(end - origin, 3),
        "workload": result.workload,
        "config": _config(result),
        "counts": _request_counts(records, state.num_skipped),
        "throughput": throughput(records).to_json(),
        "latency_seconds": _latency(records),
        **_breakdowns(records),
        **_rollouts(result),
        "purity": _purity(purity),
        "timeline": timeline(
            records, origin, end, result.config.bucket_seconds, state.token_arrivals()
        ).to_json(),
        "notes": list(result.notes),
    }


def _request_counts(records: list[RequestRecord], num_skipped: int) -> dict[str, Any]:
    num_completed = sum(r.outcome == "completed" for r in records)
    num_errors = sum(r.outcome == "error" for r in records)
    return {
        "sent": len(records),
        "completed": num_completed,
        "errors": num_errors,
        "unfinished": sum(r.outcome == "unfinished" for r in records),
        "skipped": num_skipped,
        "accounted": len(records) == num_completed + num_errors,
    }


def _latency(records: list[RequestRecord]) -> dict[str, Any]:
    lat = latencies(records)
    summaries = {"ttft": lat.ttft, "inter_token": lat.inter_token, "tpot": lat.tpot, "e2e": lat.e2e}
    return {name: (None if (s := Summary.of(v)) is None else s.to_json()) for name, v in summaries.items()}


def _breakdowns(records: list[RequestRecord]) -> dict[str, Any]:
    completed = [r for r in records if r.outcome == "completed"]
    return {
        "errors_by_status": _counts(r.error_code or "" for r in records if r.outcome == "error"),
        "responses_by_version": _version_counts(r.policy_version for r in completed),
        "samples_by_worker": _counts(s.worker_id for r in completed for s in r.samples),
        "retries": {
            "retried": sum(any(s.attempts > 1 for s in r.samples) for r in completed),
            "rerun_under_new_version": sum(
                any(s.rerun_under_new_version for s in r.samples) for r in completed
            ),
        },
    }


def _rollouts(result: RunResult) -> dict[str, Any]:
    """Rollouts driven here, versions observed (pinned, DONE) and marked events, run-relative."""
    rel = _relative(result.state.origin)
    versions = result.versions
    rollouts = [
        {
            "version": r.version,
            "drain": r.drain,
            "outcome": r.outcome,
            "reason": r.reason,
            "source": r.source,
            "started_at": rel(r.started_at),
            "committed_at": rel(r.committed_at),
            "done_at": rel(r.done_at),
            "ended_at": rel(r.ended_at),
            "worker_drains": r.worker_drains,
        }
        for r in result.rollouts
    ]
    return {
        "rollouts": rollouts,
        "versions": {
            "pinned_at": {str(v): rel(t) for v, t in sorted(versions.pinned_at.items())},
            # The version serving when the run began was not rolled out during it: left out.
            "done_at": {str(v): rel(t) for v, t in sorted(versions.done_at.items()) if v != versions.initial},
        },
        "markers": [{"at": rel(m.at), "label": m.label} for m in versions.markers],
    }


def write_report(
    report: dict[str, Any], records: list[RequestRecord], origin: float, out_dir: Path
) -> dict[str, Path]:
    """Write report.json, report.md, requests.jsonl and the PNG plots into `out_dir`; returns the
    paths by kind. The text files come first, so a long run's numbers survive a failing plot."""
    from epochserve.loadtest.plots import plot_latency_cdfs, plot_throughput

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "markdown": out_dir / "report.md",
        "requests": out_dir / "requests.jsonl",
        "latency_cdf": out_dir / "latency_cdf.png",
        "throughput": out_dir / "throughput.png",
    }
    report["files"] = {kind: path.name for kind, path in paths.items()}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    paths["markdown"].write_text(render_markdown(report))
    with paths["requests"].open("w") as out:
        for record in records:
            out.write(json.dumps(request_line(record, origin)) + "\n")
    plot_latency_cdfs(latencies(records), paths["latency_cdf"])
    plot_throughput(report, paths["throughput"])
    return paths


def request_line(record: RequestRecord, origin: float) -> dict[str, Any]:
    """One request as a JSON object (requests.jsonl): enough to find what a violation names."""
    rel = _relative(origin)
    return {
        "request_id": record.request_id, "index": record.index, "n": record.n, "group": record.group_id,
        "sent_at": rel(record.sent_at), "ended_at": rel(record.ended_at), "outcome": record.outcome,
        "policy_version": record.policy_version, "versions": sorted(record.versions),
        "ttft": record.ttft_seconds, "latency": record.latency_seconds,
        "output_tokens": record.num_output_tokens,
        "error": record.error_code, "details": record.error_details,
        "workers": sorted({s.worker_id for s in record.samples}),
        "attempts": max((s.attempts for s in record.samples), default=0),
    }  # fmt: skip


def _purity(purity: PurityResult) -> dict[str, Any]:
    def listed(violations: tuple[Violation, ...]) -> list[dict[str, str]]:
        return [
            {"kind": v.kind, "request_id": v.request_id, "detail": v.detail}
            for v in violations[:MAX_LISTED_VIOLATIONS]
        ]

    return {
        "num_checked": purity.num_checked,
        "num_violations": len(purity.violations),
        "by_kind": purity.by_kind(),
        "violations": listed(purity.violations),
        "num_user_group_splits": len(purity.user_group_splits),
        "user_group_splits": listed(purity.user_group_splits),
    }


def _config(result: RunResult) -> dict[str, Any]:
    config, plan = result.config, result.config.plan
    soak = config.soak
    return {
        "target": config.target, "mode": plan.mode, "concurrency": plan.concurrency, "rate": plan.rate,
        "duration_seconds": plan.duration_seconds, "num_requests": plan.num_requests,
        "request_timeout_seconds": plan.request_timeout_seconds, "temperature": plan.temperature,
        "top_p": plan.top_p, "ignore_eos": plan.ignore_eos, "output_mode": str(plan.output_mode),
        "strict_groups": config.strict_groups,
        "soak": None if soak is None else {
            "admin": soak.admin, "sources": [str(s) for s in soak.sources],
            "rollout_every_seconds": soak.rollout_every_seconds, "drains": list(soak.drains),
            "publish_dir": str(soak.publish_dir),
        },
        "labels": dict(config.labels),
    }  # fmt: skip


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _version_counts(versions: Iterable[int | None]) -> dict[str, int]:
    """By version in numeric order; "mixed" for completed responses naming several (violations)."""
    counts = Counter(versions)
    ordered = {str(v): n for v, n in sorted((v, n) for v, n in counts.items() if v is not None)}
    return ordered | ({"mixed": counts[None]} if None in counts else {})


def _relative(origin: float) -> Callable[[float | None], float | None]:
    def rel(at: float | None) -> float | None:
        return None if at is None else round(at - origin, 3)

    return rel
