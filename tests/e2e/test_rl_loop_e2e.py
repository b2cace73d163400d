"""Issue 8's end-to-end check on CPU: `epochctl up` with 2 workers, the RL loop for 3 steps on SmolLM2
with extra load, one worker killed mid-run (and restarted by `up`), then a clean shutdown."""

import json
import os
import signal
import subprocess
import time

import pytest
from fixtures.processes import EPOCHCTL

from epochserve.app.demo.background_load import BackgroundLoad
from epochserve.app.demo.rl_loop import LoopConfig, run_rl_loop


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


@pytest.fixture()
def up(smollm2_dir, tmp_path):
    ready = tmp_path / "up.json"
    log = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(
        [*EPOCHCTL, "up", "--model", str(smollm2_dir), "--workers", "2",
         "--workdir", str(tmp_path / "cluster"), "--ready-file", str(ready),
         "--worker-arg=--lease-ttl", "--worker-arg=3"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (ready.is_file() and ready.read_text()):
        assert process.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "epochctl up not ready in time"
        time.sleep(0.2)
    yield process, json.loads(ready.read_text()), tmp_path
    if process.poll() is None:
        process.kill()


def test_rl_loop_under_load_with_a_worker_killed(up, smollm2_dir):
    process, endpoints, tmp_path = up
    router = endpoints["routers"][0]
    with open(endpoints["admin_token_file"]) as token_file:
        token = token_file.read().strip()
    pids = dict(endpoints["pids"])
    load = BackgroundLoad(router)
    load.start()

    def after_step(report):
        if report.step == 0:  # mid-run: SIGKILL a worker; `up` restarts it
            os.kill(pids["worker-1"], signal.SIGKILL)

    reports = run_rl_loop(router, endpoints["admin"], token, smollm2_dir, tmp_path / "trainer",
                          LoopConfig(steps=3), after_step)  # fmt: skip
    summary = load.stop()
    assert [r.published_version for r in reports] == [1, 2, 3]
    for report in reports:
        assert len(set(report.group_versions)) == 1  # every group on one version (I1)
        assert report.mismatch.max_abs_delta <= 1e-4
        assert report.mismatch.token_clip_rate == 0 and report.mismatch.sequence_clip_rate == 0
    assert summary.completed > 0 and summary.mixed_versions == 0
    assert summary.lost == 0  # every request: a response or an explicit error (I5)
    restarted = json.loads((tmp_path / "cluster" / "pids.json").read_text())
    assert restarted["worker-1"] != pids["worker-1"] and alive(restarted["worker-1"])
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0
    for pid in restarted.values():  # nothing outlives `epochctl up`
        deadline = time.monotonic() + 30
        while pid and alive(pid):
            assert time.monotonic() < deadline, f"pid {pid} outlived epochctl up"
            time.sleep(0.2)
