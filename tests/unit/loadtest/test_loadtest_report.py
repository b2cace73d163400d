"""The report of a crafted run: the JSON numbers, the Markdown verdict, and files and plots written;
preparing soak versions from a source checkpoint; the CLI's flag checks; the progress line."""

from __future__ import annotations

import argparse
import io
import json

import pytest
import torch
from loadkit import completed, failed
from safetensors.torch import save_file

from epochserve.app.cli import loadtest_cmd
from epochserve.client.generation import PolicyInfo
from epochserve.errors import ConfigError
from epochserve.loadtest.config import LoadPlan, LoadtestConfig
from epochserve.loadtest.driver import RunState
from epochserve.loadtest.progress import ProgressDisplay
from epochserve.loadtest.records import ObservedRollout, RequestRecord, VersionLog
from epochserve.loadtest.report import check_and_write
from epochserve.loadtest.runner import RunResult
from epochserve.loadtest.versions import VersionPublisher
from epochserve.worker.weights.manifest import MANIFEST_NAME, Manifest


def crafted_run(tmp_path, records: list[RequestRecord]) -> RunResult:
    config = LoadtestConfig("127.0.0.1:1", LoadPlan(concurrency=2, num_requests=4), tmp_path / "out")
    state = RunState(100.0)
    state.records.extend(records)
    state.count_tokens(100.5, 12)
    versions = VersionLog()
    versions.observe_pinned(0, 100.0)  # v0 served when the run began
    versions.observe_done(0, 100.0)
    versions.observe_done(1, 102.0)
    versions.mark(101.0, "worker-1 killed")
    rollout = ObservedRollout(1, "abort", "/ckpt", 101.5, 101.8, 102.0, 102.0, "done")
    return RunResult(config, "crafted", state, versions, [rollout], 0.0, ended_at=106.0)


def test_report_numbers_files_and_plots(tmp_path):
    records = [
        completed("a", [0, 0], sent_at=100.0, ended_at=101.0, num_tokens=3),
        completed("b", [1], sent_at=102.5, ended_at=104.0, num_tokens=6),
        failed("c", "ABORTED", sent_at=101.0),
    ]
    report, paths = check_and_write(crafted_run(tmp_path, records))
    assert report["counts"] == {
        "sent": 3, "completed": 2, "errors": 1, "unfinished": 0, "skipped": 0, "accounted": True
    }  # fmt: skip
    assert report["throughput"]["output_tokens_per_second"] == pytest.approx(12 / 4.0)
    assert report["throughput"]["input_tokens_per_second"] == pytest.approx(2 * 10 / 4.0)  # once per request
    # TPOT: (end - first token) / (tokens - 1): a (1.0 - 0.1) / 2, b (1.5 - 0.1) / 5
    assert report["latency_seconds"]["tpot"]["max"] == pytest.approx(0.45)
    assert report["latency_seconds"]["tpot"]["count"] == 2
    assert report["errors_by_status"] == {"ABORTED": 1}
    assert report["responses_by_version"] == {"0": 1, "1": 1}
    assert report["latency_seconds"]["e2e"]["max"] == pytest.approx(1.5)
    assert report["versions"]["done_at"] == {"1": 2.0}  # v0 was not rolled out during the run
    assert report["rollouts"][0]["committed_at"] == pytest.approx(1.8)
    assert report["purity"]["num_violations"] == 0
    assert json.loads(paths["json"].read_text())["counts"]["sent"] == 3
    markdown = paths["markdown"].read_text()
    assert "PASS" in markdown and "| ABORTED | 1 |" in markdown and "worker-1 killed" in markdown
    assert "time per output token" in markdown and "input tok/s" in markdown
    assert "DONE observed (the freshness check's times): v1 at 2.00 s." in markdown
    assert len(paths["requests"].read_text().splitlines()) == 3
    for kind in ("latency_cdf", "throughput"):
        assert paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[kind].stat().st_size > 10_000


def test_a_run_without_rollouts_says_so_and_lists_no_version(tmp_path):
    run = crafted_run(tmp_path, [completed("a", [0], sent_at=100.0, ended_at=101.0)])
    run.versions.done_at.pop(1)
    run.rollouts.clear()
    report, paths = check_and_write(run)
    assert report["versions"]["done_at"] == {}
    markdown = paths["markdown"].read_text()
    assert "No rollout during the run." in markdown and "DONE observed" not in markdown


def test_a_stale_response_fails_the_report(tmp_path):
    records = [completed("stale", [0], sent_at=103.0, ended_at=104.0)]  # v1 was DONE at 102.0
    report, paths = check_and_write(crafted_run(tmp_path, records))
    assert report["purity"]["by_kind"] == {"stale_after_done": 1}
    assert "FAIL: 1 violation(s) (stale_after_done 1)" in paths["markdown"].read_text()


def test_a_version_is_prepared_as_links_and_a_manifest_naming_it(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(source / "model.safetensors"))
    (source / "config.json").write_text("{}")
    publisher = VersionPublisher(tmp_path / "pub")
    path, checksum = publisher.prepare(7, source)
    manifest = Manifest.read(path)
    assert path.name == "v7" and manifest.version == 7 and manifest.checksum == checksum
    assert (path / "model.safetensors").resolve() == (source / "model.safetensors").resolve()
    assert (path / "config.json").is_symlink()
    path8, checksum8 = publisher.prepare(8, source)
    assert Manifest.read(path8).tensors == manifest.tensors and checksum8 != checksum
    publisher.prepare(7, source)  # an earlier run's version of ours is replaced
    (tmp_path / "pub" / "v9").mkdir()
    with pytest.raises(ConfigError, match="not a published version"):
        publisher.prepare(9, source)  # a directory that is not ours is never deleted
    assert not (source / MANIFEST_NAME).exists()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    loadtest_cmd.register(parser.add_subparsers())
    return parser.parse_args(["loadtest", *argv])


def test_cli_flags_map_onto_the_config_and_bad_combinations_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EPOCHSERVE_ADMIN_TOKEN", "t0k")
    args = parse("--rate", "5", "--duration", "30", "--rollout-every", "10", "--source", str(tmp_path),
                 "--out", str(tmp_path / "o"), "--label", "run=ci")  # fmt: skip
    config = loadtest_cmd.build_config(args)
    assert config.plan.mode == "open" and config.plan.drain_timeout_seconds == 330.0
    assert config.soak.drains == ("finish", "abort") and config.soak.token == "t0k"
    assert config.soak.publish_dir == tmp_path / "o" / "versions" and config.labels == {"run": "ci"}
    with pytest.raises(SystemExit):
        parse("--rate", "5", "--concurrency", "2", "--duration", "1")
    for argv in (
        ("--concurrency", "2"),
        ("--concurrency", "2", "--duration", "5", "--source", str(tmp_path)),
    ):
        with pytest.raises(ConfigError):
            loadtest_cmd.build_config(parse(*argv))
    assert loadtest_cmd.run(parse("--concurrency", "0", "--duration", "1")) == loadtest_cmd.EXIT_USAGE


def test_progress_writes_plain_lines_with_counts_rates_and_version_off_a_terminal():
    state = RunState(0.0)
    state.records.extend(
        [completed("a", [2]), failed("b", "ABORTED"), RequestRecord(0, "c", 1, 4, None, 0.0)]
    )
    state.num_completed, state.num_errors = 1, 1
    state.count_tokens(1.0, 40)
    stream = io.StringIO()
    rollouts = [ObservedRollout(2, "finish", "/ckpt", outcome="done")]
    policy = PolicyInfo(2, True, 2, 2, "router-0", "/models/m")
    display = ProgressDisplay(state, lambda: policy, lambda: rollouts, stream, clock=lambda: 2.0)
    display.show()
    line = stream.getvalue()
    assert line.endswith("\n") and "\r" not in line  # a plain line: not a terminal
    assert "sent 3  ok 1  err 1  open 1" in line and "0.5 req/s  20 tok/s" in line
    assert "v2 DONE" in line and "rollouts 1 done, 0 not" in line
