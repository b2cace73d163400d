"""PNG plots of a load run: latency CDFs, and throughput over time with the rollouts marked.

matplotlib comes with the `loadtest` extra. It is imported here only, with the non-interactive
Agg backend (no display needed, safe in threads and on servers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from epochserve.loadtest.stats import Latencies

_DRAIN_COLORS = {"finish": "tab:green", "abort": "tab:orange", "overlap": "tab:blue"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdfs(lat: Latencies, path: Path) -> None:
    """Three panels (TTFT, inter-token, end to end): the fraction of values at or below x, in ms."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (title, values) in zip(
        axes,
        (("time to first token", lat.ttft), ("inter-token", lat.inter_token), ("end to end", lat.e2e)),
        strict=True,
    ):
        ordered = sorted(1000.0 * v for v in values)
        if ordered:
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, fractions, where="post")
            ax.set_xscale("log" if ordered[0] > 0 and ordered[-1] / max(ordered[0], 1e-9) > 100 else "linear")
        else:
            ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
        ax.set_title(f"{title} ({len(ordered)})")
        ax.set_xlabel("ms")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("fraction of values ≤ x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_throughput(report: dict[str, Any], path: Path) -> None:
    """Completed requests/s and streamed tokens/s per bucket; a vertical line where each rollout
    was observed DONE (green finish, orange abort, grey if not driven here), dotted where it
    committed, red where it aborted, black for marked events (a worker killed)."""
    plt = _pyplot()
    tl = report["timeline"]
    width = tl["bucket_seconds"]
    times = [(i + 0.5) * width for i in range(len(tl["completed"]))]  # each bucket at its middle
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    top.plot(times, [c / width for c in tl["completed"]], label="completed req/s")
    top.plot(times, [e / width for e in tl["errors"]], label="errors/s", color="tab:red", alpha=0.7)
    bottom.plot(times, [t / width for t in tl["streamed_tokens"]], label="streamed tok/s", color="tab:purple")
    top.set_ylabel("requests/s")
    bottom.set_ylabel("tokens/s")
    bottom.set_xlabel("seconds since the start")
    _mark_rollouts(report, (top, bottom))
    for ax in (top, bottom):
        ax.set_ylim(bottom=0)  # rates: a floor above 0 would magnify small changes
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    top.set_title("throughput over time (vertical lines: rollouts DONE / committed / aborted, events)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mark_rollouts(report: dict[str, Any], axes: tuple[Any, Any]) -> None:
    drains = {str(r["version"]): r for r in report["rollouts"]}
    for version, at in report["versions"]["done_at"].items():
        color = _DRAIN_COLORS.get(drains[version]["drain"], "grey") if version in drains else "grey"
        for ax in axes:
            ax.axvline(at, color=color, linewidth=1)
        axes[0].annotate(f"v{version}", (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7)
    for rollout in report["rollouts"]:
        for ax in axes:
            if rollout["committed_at"] is not None:
                ax.axvline(rollout["committed_at"], color="grey", linestyle=":", linewidth=1)
            if rollout["outcome"] == "aborted" and rollout["ended_at"] is not None:
                ax.axvline(rollout["ended_at"], color="tab:red", linestyle="--", linewidth=1)
    for index, marker in enumerate(report["markers"]):
        for ax in axes:
            ax.axvline(marker["at"], color="black", linestyle="-.", linewidth=1)
        height = 0.92 - 0.07 * (index % 3)  # staggered: a kill and its restart are seconds apart
        where = (marker["at"], height)
        axes[1].annotate(marker["label"], where, xycoords=("data", "axes fraction"), fontsize=7)
