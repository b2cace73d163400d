"""`epochctl loadtest` end to end: a real etcd, coordinator, two tiny-model workers and a router
(LocalCluster, as `epochctl up` runs them), and the CLI as its own process.

30 seconds of closed-loop load with n=2 groups while soak mode rolls out two versions through the
Admin API (drain finish, then abort). The report must add up (sent = completed + errors, none
unfinished), find 0 violations, show both rollouts DONE with responses of every version, and
the report files and plots must be written.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from fixtures.models import build_tiny_model

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.app.local.processes import EPOCHCTL

DURATION_SECONDS = 30
ROLLOUT_EVERY_SECONDS = 12  # rollouts at ~12 s and ~24 s; the next would come after the load


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_30_second_soak_with_two_rollouts_adds_up_with_no_violation(tmp_path):
    start = build_tiny_model("llama", tmp_path / "A", seed=0)
    other = build_tiny_model("llama", tmp_path / "B", seed=1)
    spec = LocalClusterSpec(
        model_dir=start,
        workdir=tmp_path / "cluster",
        num_workers=2,
        # Nothing is killed here, so leases take the production default (10 s): with 2 s, and once
        # with 5 s (a full `make test` on 2 cores, 2026-12-03), every process lost its lease at the
        # same starved moment and requests failed over to UNAVAILABLE.
        worker_args=("--lease-ttl", "10", "--block-size", "4", "--max-num-seqs", "8"),
        fast_etcd=True,
        num_routers=1,
        router_args=("--lease-ttl", "10"),
    )
    out = tmp_path / "report"
    with LocalCluster(spec) as cluster:
        token_file = tmp_path / "token"
        token_file.write_text(cluster.token)
        command = [
            *EPOCHCTL, "loadtest", "--target", cluster.router_address, "--concurrency", "8",
            "--duration", str(DURATION_SECONDS), "--n", "2", "--input-len", "uniform:4,24",
            "--output-len", "uniform:8,24", "--out", str(out),
            "--rollout-every", str(ROLLOUT_EVERY_SECONDS), "--source", str(other), str(start),
            "--admin", cluster.admin_address, "--token-file", str(token_file),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "PASS: 0 violations" in done.stdout
    assert "sent " in done.stderr and " ok " in done.stderr  # the progress display (plain, not a TTY)

    report = json.loads((out / "report.json").read_text())
    counts = report["counts"]
    assert counts["sent"] == counts["completed"] + counts["errors"] and counts["unfinished"] == 0
    assert counts["completed"] > 100
    assert set(report["errors_by_status"]) <= {"ABORTED"}, report["errors_by_status"]
    assert report["purity"]["num_violations"] == 0 and report["purity"]["num_checked"] == counts["sent"]

    rollouts = report["rollouts"]
    assert [(r["version"], r["drain"], r["outcome"]) for r in rollouts] == [
        (1, "finish", "done"),
        (2, "abort", "done"),
    ], rollouts  # with each rollout's reason
    assert set(report["versions"]["done_at"]) == {"1", "2"}  # v0 served before the run began
    assert set(report["responses_by_version"]) == {"0", "1", "2"}
    assert sum(report["responses_by_version"].values()) == counts["completed"]
    for summary in report["latency_seconds"].values():
        assert (
            summary["count"] > 0 and 0 < summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]
        )
    assert sum(report["timeline"]["completed"]) == counts["completed"]

    lines = (out / "requests.jsonl").read_text().splitlines()
    assert len(lines) == counts["sent"]
    assert all(json.loads(line)["n"] == 2 for line in lines)
    assert (out / "report.md").read_text().startswith("# Load test report")
    for plot in ("latency_cdf.png", "throughput.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG" and (out / plot).stat().st_size > 10_000
