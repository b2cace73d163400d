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
from pathlib import Path
from typing import Any

from epochserve.lifetime import popen_tied_to_parent

# -P: never put the working directory on the import path, where a checkout's top-level kernels/
# folder would shadow Hugging Face's `kernels` package (transformers imports it).
EPOCHCTL = [sys.executable, "-P", "-m", "epochserve.controlplane.cli.main"]


class ManagedProcess:
    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.ready_file = workdir / f"{name}.ready.json"
        self.log_path = workdir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = popen_tied_to_parent(
                [*EPOCHCTL, *self.args, "--ready-file", str(self.ready_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Block until the ready file appears; RuntimeError (with the log's tail) if it exits first."""
        deadline = time.monotonic() + timeout
        while not (self.ready_file.is_file() and self.ready_file.read_text()):
            if not self.is_running:
                raise RuntimeError(f"{self.name} exited with {self.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.info = json.loads(self.ready_file.read_text())
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
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.is_file() else ""
