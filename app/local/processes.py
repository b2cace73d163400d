"""ManagedProcess: one `epochctl` child process that reports readiness through a JSON file.

Used by the local cluster launcher (`epochctl up`) and by tests. Children die with their parent
(PR_SET_PDEATHSIG on Linux), so killing the launcher leaves no orphans.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from epochserve.lifetime import popen_tied_to_parent

# -P: never put the working directory on the import path, where a checkout's top-level kernels/
# folder would shadow Hugging Face's `kernels` package (transformers imports it).
EPOCHCTL = [sys.executable, "-P", "-m", "epochserve.app.cli.main"]


class ManagedProcess:
    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.workdir = workdir
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        self.extra_env = dict(env or {})
        self.env = {**os.environ, **self.extra_env}
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def again(self, args: list[str] | None = None) -> ManagedProcess:
        """A new, unstarted process to take this one's place: same name, log, ready file and
        environment; `args` replaces its flags (default: the same flags)."""
        flags = list(self.args if args is None else args)
        return ManagedProcess(self.name, flags, self.workdir, env=self.extra_env)

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = popen_tied_to_parent(
                [*EPOCHCTL, *self.args, "--ready-file", str(self.ready_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def poll_ready(self) -> bool:
        """Whether the ready file is there (then `info` holds it); never blocks."""
        if self.info:
            return True
        try:
            self.info = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):  # not written yet, or caught half-written
            return False
        return bool(self.info)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Block until the ready file appears; RuntimeError (with the log's tail) if it exits first."""
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if not self.is_running:
                raise RuntimeError(f"{self.name} exited with {self.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self.info

    @property
    def address(self) -> str:
        return f"{self.info['host']}:{self.info['port']}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    def signal(self, sig: int) -> None:
        if self.is_running and self.process is not None:
            self.process.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
        self.signal(signal.SIGTERM)
        return self.reap(timeout)

    def reap(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for it to exit, then SIGKILL it; returns the exit code."""
        if self.process is None:
            return None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""


def stop_all(processes: Iterable[ManagedProcess], timeout: float = 30.0) -> None:
    """SIGTERM all of them at once, then SIGKILL whichever still runs `timeout` seconds later:
    they shut down side by side instead of one after another."""
    processes = list(processes)
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        process.reap(max(0.0, deadline - time.monotonic()))
