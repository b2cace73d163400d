"""The Markdown form of a load report (report.py builds the dict this reads)."""

from __future__ import annotations

from typing import Any


def verdict(report: dict[str, Any]) -> str:
    """One line: PASS when every request is accounted for and no invariant was broken."""
    purity, counts = report["purity"], report["counts"]
    if purity["num_violations"] == 0 and counts["accounted"]:
        return "PASS: 0 violations; sent = completed + errors"
    kinds = ", ".join(f"{k} {n}" for k, n in purity["by_kind"].items())
    return f"FAIL: {purity['num_violations']} violation(s) ({kinds})"


def render_markdown(report: dict[str, Any]) -> str:
    sections = [
        f"# Load test report\n\n**{verdict(report)}**\n\nWorkload: {report['workload']}  \n"
        f"Target: `{report['config']['target']}`, {_mode(report['config'])}, "
        f"{report['duration_seconds']:.1f} s",
        _counts(report),
        _latency(report),
        _breakdowns(report),
        _rollouts(report),
        _purity(report),
    ]
    if report["notes"]:
        sections.append("## Notes\n\n" + "\n".join(f"- {note}" for note in report["notes"]))
    files = report.get("files", {})
    if "latency_cdf" in files:
        sections.append(
            f"## Plots\n\n![latency CDFs]({files['latency_cdf']})\n\n![throughput]({files['throughput']})"
        )
    return "\n\n".join(sections) + "\n"


def _mode(config: dict[str, Any]) -> str:
    loop = (
        f"closed loop, concurrency {config['concurrency']}"
        if config["mode"] == "closed"
        else f"open loop, Poisson {config['rate']:g} req/s"
    )
    soak = config["soak"]
    final = (
        ", output mode final (TTFT: to the first whole sample)"
        if config.get("output_mode") == "final"
        else ""
    )
    return loop + final + (f", soak: a rollout every {soak['rollout_every_seconds']:g} s" if soak else "")


def _counts(report: dict[str, Any]) -> str:
    c, t = report["counts"], report["throughput"]
    return (
        "## Requests\n\n| sent | completed | errors | unfinished | skipped | req/s | input tok/s | "
        "output tok/s |\n|---|---|---|---|---|---|---|---|\n"
        f"| {c['sent']} | {c['completed']} | {c['errors']} | {c['unfinished']} | {c['skipped']} | "
        f"{t['requests_per_second']:.2f} | {t['input_tokens_per_second']:.1f} | "
        f"{t['output_tokens_per_second']:.1f} |"
    )


def _latency(report: dict[str, Any]) -> str:
    rows = ["## Latency (ms)\n\n| | count | mean | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    names = {
        "ttft": "time to first token",
        "inter_token": "inter-token",
        "tpot": "time per output token",
        "e2e": "end to end",
    }
    for key, label in names.items():
        s = report["latency_seconds"][key]
        if s is None:
            rows.append(f"| {label} | 0 | | | | | |")
            continue
        values = " | ".join(f"{1000 * s[q]:.1f}" for q in ("mean", "p50", "p90", "p99", "max"))
        rows.append(f"| {label} | {s['count']} | {values} |")
    return "\n".join(rows)


def _table(title: str, column: str, counts: dict[str, int]) -> str:
    if not counts:
        return f"**{title}**: none"
    rows = "\n".join(f"| {key} | {value} |" for key, value in counts.items())
    return f"**{title}**\n\n| {column} | count |\n|---|---|\n{rows}"


def _breakdowns(report: dict[str, Any]) -> str:
    retries = report["retries"]
    return "\n\n".join(
        [
            "## Breakdown",
            _table("Errors by gRPC status", "status", report["errors_by_status"]),
            _table("Responses by policy version", "version", report["responses_by_version"]),
            _table("Samples by worker", "worker", report["samples_by_worker"]),
            f"Retried on another worker: {retries['retried']}; re-run under a new version "
            f"after a drain=abort rollout: {retries['rerun_under_new_version']}.",
        ]
    )


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _rollouts(report: dict[str, Any]) -> str:
    done = report["versions"]["done_at"]
    lines = ["## Rollouts"]
    if report["rollouts"]:
        lines.append(
            "| version | drain | outcome | started (s) | committed (s) | DONE (s) | reason |\n"
            "|---|---|---|---|---|---|---|"
        )
        for r in report["rollouts"]:
            lines[-1] += (
                f"\n| {r['version']} | {r['drain']} | {r['outcome']} | {_seconds(r['started_at'])} | "
                f"{_seconds(r['committed_at'])} | {_seconds(r['done_at'])} | {r['reason']} |"
            )
    drains = [
        f"| v{r['version']} | {worker} | {d['drain']} | {_seconds(d['first_token_seconds'])} | "
        f"{_seconds(d['retire_seconds'])} | {d['finished_previous']} | {d['aborted_previous']} |"
        for r in report["rollouts"]
        for worker, d in sorted(r.get("worker_drains", {}).items())
    ]
    if drains:
        lines.append(
            "Per worker, from the commit: the new version's first token and the old version's end.\n\n"
            "| version | worker | drain | first new token (s) | old version ended (s) | old finished | "
            "old aborted |\n|---|---|---|---|---|---|---|\n" + "\n".join(drains)
        )
    if done:
        observed = ", ".join(f"v{v} at {t:.2f} s" for v, t in done.items())
        lines.append(f"DONE observed (the freshness check's times): {observed}.")
    elif not report["rollouts"]:
        lines.append("No rollout during the run.")
    if report["markers"]:
        lines.append(
            "Events: " + ", ".join(f"{m['label']} at {m['at']:.2f} s" for m in report["markers"]) + "."
        )
    return "\n\n".join(lines)


def _purity(report: dict[str, Any]) -> str:
    p = report["purity"]
    lines = [
        "## Purity, freshness, accounting",
        f"Checked {p['num_checked']} requests: {p['num_violations']} violation(s). "
        f"User-defined groups split across versions: {p['num_user_group_splits']}"
        + (" (counted as violations: --strict-groups)." if report["config"]["strict_groups"] else "."),
    ]
    if p["violations"]:
        rows = "\n".join(f"| {v['kind']} | {v['request_id']} | {v['detail']} |" for v in p["violations"][:20])
        lines.append(f"| kind | request | detail |\n|---|---|---|\n{rows}")
    return "\n\n".join(lines)
