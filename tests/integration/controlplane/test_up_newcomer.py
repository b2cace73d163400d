"""`epochctl up` as a newcomer uses it: the other commands reach the cluster through nothing but the
`export` lines it printed; Ctrl-C, also during start-up, stops everything and removes its temp
workdir and ready file."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from up_kit import ProcessTracker, user_env, wait_until

EPOCHCTL_SCRIPT = str(Path(sys.executable).with_name("epochctl"))  # the console script a user runs
START_TIMEOUT = 300.0  # seconds: SmolLM2 prepared and loaded on a busy 2-core machine
COMMAND_TIMEOUT = 180.0


class Up:
    """`epochctl up` in the background, its stderr in a file, every descendant tracked."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.env = user_env(tmp_path)
        self.stderr_path = tmp_path / "up.stderr"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [EPOCHCTL_SCRIPT, "up", *args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=self.env,
                cwd=tmp_path,
            )
        self.tracker = ProcessTracker(self.process.pid)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for(self, text: str) -> None:
        def seen() -> bool:
            self.tracker.sample()
            assert self.process.poll() is None, f"up exited with {self.process.returncode}:\n{self.stderr()}"
            return text in self.stderr()

        wait_until(seen, START_TIMEOUT, repr(text), on_timeout=self.stderr)

    def interrupt(self) -> int:
        self.tracker.sample()
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(COMMAND_TIMEOUT)

    def exports(self) -> dict[str, str]:
        lines = [line.strip() for line in self.stderr().splitlines() if line.strip().startswith("export ")]
        return dict(line.removeprefix("export ").split("=", 1) for line in lines)


def test_commands_find_the_cluster_through_what_up_printed_and_ctrl_c_leaves_nothing(smollm2_dir, tmp_path):
    up = Up(tmp_path, "--model", str(smollm2_dir))
    try:
        up.wait_for("Ctrl-C stops everything")
        exports = up.exports()
        assert set(exports) == {
            "EPOCHSERVE_UP", "EPOCHSERVE_ROUTER", "EPOCHSERVE_ADMIN", "EPOCHSERVE_ADMIN_TOKEN_FILE",
            "OPENAI_BASE_URL",
        }  # fmt: skip
        ready_file = Path(exports["EPOCHSERVE_UP"])
        workdir = ready_file.parent
        ready = json.loads(ready_file.read_text())
        assert ready["metrics"][0].endswith("/metrics")
        assert ready["openai"] == exports["OPENAI_BASE_URL"] and ready["openai"].endswith("/v1")
        import openai  # the HTTP front, found through the export line alone

        models = openai.OpenAI(base_url=exports["OPENAI_BASE_URL"], api_key="unused").models.list()
        assert [m.id for m in models.data] == [smollm2_dir.name]
        env = {**up.env, **exports}

        def epochctl(*args: str) -> subprocess.CompletedProcess[str]:
            done = subprocess.run([EPOCHCTL_SCRIPT, *args], capture_output=True, text=True, env=env,
                                  timeout=COMMAND_TIMEOUT, cwd=tmp_path)  # fmt: skip
            assert done.returncode == 0, f"epochctl {' '.join(args)}:\n{done.stderr}"
            return done

        text = epochctl(
            "generate", "--prompt", "The capital of France is", "--temperature", "0", "--max-tokens", "4"
        )
        assert "text: " in text.stdout and "policy_version=0" in text.stdout
        assert "worker-0" in epochctl("workers").stdout
        assert json.loads(epochctl("rollout", "list", "--json").stdout)["committed_epoch"] == 0
        epochctl(
            "loadtest",
            "--concurrency",
            "2",
            "--num-requests",
            "4",
            "--no-progress",
            "--out",
            str(tmp_path / "lt"),
        )
    finally:
        code = up.interrupt()
    assert code == 0, up.stderr()
    assert not ready_file.exists() and not workdir.exists()  # nothing of the run is left ...
    assert up.tracker.alive() == []  # ... and no process it started


def test_ctrl_c_during_start_up_stops_at_once_and_leaves_nothing(smollm2_dir, tmp_path):
    up = Up(tmp_path, "--model", str(smollm2_dir), "--workers", "2")
    workdirs = tmp_path / "tmp"
    # The workers are loading: the start is under way and far from done.
    wait_until(lambda: any(workdirs.glob("epochserve-up-*/worker-1.log")), START_TIMEOUT, "worker-1 to start",
               on_timeout=up.stderr)  # fmt: skip
    time.sleep(0.5)  # let its Python start: a signal then reaches a process that is loading
    code = up.interrupt()
    # 130: the start was interrupted (a start that had finished would have ended with 0).
    assert code == 130, up.stderr()
    assert list(workdirs.iterdir()) == [] and up.tracker.alive() == []
