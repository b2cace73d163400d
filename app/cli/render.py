"""Human-readable output of the Admin CLI commands (plain text tables, no colour)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from epochserve.proto.v1 import admin_pb2 as pb


def phase_name(phase: int) -> str:
    return pb.RolloutPhase.Name(phase).removeprefix("ROLLOUT_PHASE_")


def drain_name(drain: int) -> str:
    return pb.DrainPolicy.Name(drain).removeprefix("DRAIN_POLICY_").lower()


def _when(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(map(str, header)), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def rollout_line(r: pb.Rollout) -> str:
    """One line: version, phase, source, drain (and its deadline), reason."""
    reason = f"  ({r.reason})" if r.reason else ""
    drain = drain_name(r.drain)
    if r.HasField("drain_deadline_seconds"):
        drain += f" drain_deadline={r.drain_deadline_seconds:g}s"
    return f"v{r.version} {phase_name(r.phase)}  source={r.source} drain={drain}{reason}"


def progress_line(s: pb.RolloutStatus) -> str:
    """One line of progress, for --wait; the reason once there is one (why it aborted)."""
    reason = f"  ({s.rollout.reason})" if s.rollout.reason else ""
    return (
        f"v{s.rollout.version} {phase_name(s.rollout.phase)}: staged {s.num_staged}/{s.num_ready_workers}, "
        f"serving {s.num_serving}/{s.num_ready_workers}, routers acked {s.num_acked}/{len(s.routers)}{reason}"
    )


def status_block(s: pb.RolloutStatus) -> str:
    """The rollout, then one row per worker and per router."""
    r = s.rollout
    deadline = _when(r.phase_deadline) if r.HasField("phase_deadline") else "-"
    lines = [
        rollout_line(r),
        f"committed epoch v{s.committed_epoch}; started {_when(r.created_at)}; "
        f"updated {_when(r.updated_at)} by {r.updated_by}; deadline {deadline}",
        progress_line(s),
        "",
        workers_table(s.workers, r.version),
    ]
    if s.routers:
        lines += ["", routers_table(s.routers)]
    if r.fenced_worker_ids or r.fenced_router_ids:
        lines += ["", f"fenced: workers {list(r.fenced_worker_ids)} routers {list(r.fenced_router_ids)}"]
    return "\n".join(lines)


def workers_table(workers: Sequence[pb.WorkerInfo], version: int | None = None) -> str:
    if not workers:
        return "(no workers registered)"
    rows = []
    for w in workers:
        staged = f"v{w.staged_version}" if w.HasField("staged_version") else "-"
        failed = f"v{w.failed_version}: {w.failure_reason}" if w.HasField("failed_version") else ""
        mark = "" if version is None else ("serving" if w.serving_version == version else "")
        if w.HasField("retiring_version"):
            mark += f" (v{w.retiring_version} still running)"
        status = pb.WorkerStatus.Name(w.status).removeprefix("WORKER_STATUS_").lower()
        rows.append(
            [w.worker_id, status, f"v{w.serving_version}", staged, w.address, w.tp_size, mark or failed]
        )
    table = _table(["WORKER", "STATUS", "SERVING", "STAGED", "ADDRESS", "TP", "NOTE"], rows)
    drains = [drain_line(w.worker_id, w.last_drain) for w in workers if w.HasField("last_drain")]
    return "\n".join([table, *drains])


def drain_line(worker_id: str, d: pb.DrainReport) -> str:
    """How a worker's last drain went: its first new-version token, its old version's end, counts."""

    def seconds(field: str) -> str:
        return f"{getattr(d, field):.3f}s" if d.HasField(field) else "pending"

    why = f" ({d.reason})" if d.reason else ""
    return (
        f"  {worker_id} drain to v{d.version} ({drain_name(d.drain)}{why}): first v{d.version} token "
        f"{seconds('first_token_seconds')}, previous version ended {seconds('retire_seconds')}, "
        f"{d.finished_previous} finished, {d.aborted_previous} aborted"
    )


def routers_table(routers: Sequence[pb.RouterInfo]) -> str:
    return _table(
        ["ROUTER", "ACKED", "ADDRESS"], [[r.router_id, f"v{r.acked_epoch}", r.address] for r in routers]
    )


def rollouts_table(rollouts: Sequence[pb.Rollout]) -> str:
    if not rollouts:
        return "(no rollouts)"
    rows = [
        [f"v{r.version}", phase_name(r.phase), drain_name(r.drain), _when(r.created_at), r.source, r.reason]
        for r in rollouts
    ]
    return _table(["VERSION", "PHASE", "DRAIN", "STARTED", "SOURCE", "REASON"], rows)
