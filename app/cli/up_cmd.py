"""`epochctl up`: a whole cluster on this machine — etcd, coordinators, workers, routers — until
Ctrl-C or SIGTERM, restarting whatever of it exits (Supervisor).

What it prints once everything is up is kept current in two files: the ready file (--ready-file,
else WORKDIR/up.json) and WORKDIR/pids.json ({process name: pid}); both are rewritten, whole, each
time every restarted process is ready again. It also prints `export` lines (stderr) with which
other commands find the cluster (cli/cluster_flags.py). On exit the ready file is removed, and so is
the workdir unless it was given (--workdir) or kept (--keep).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the cluster module pulls in the store layer; `--help` should not
    from epochserve.app.local.cluster import LocalCluster
    from epochserve.app.local.processes import ManagedProcess

POLL_INTERVAL = 0.5  # seconds between two looks at the processes
FIRST_RETRY_DELAY = 1.0  # seconds before restarting a process that died before it was ready ...
MAX_RETRY_DELAY = 30.0  # ... doubling each time it does so again, up to this


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run a local cluster: etcd, coordinator, workers, router")
    parser.add_argument("--model", default="smollm2", help="Hugging Face model dir, or 'smollm2' (bundled)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (TP groups)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per worker")
    parser.add_argument("--routers", type=int, default=1, help="router processes")
    parser.add_argument(
        "--coordinators", type=int, default=1, help="coordinator processes (one leads, the others stand by)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cluster", default="local", help="cluster name (etcd prefix)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="logs, etcd data, token (default: a temp dir, removed on exit)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp workdir (logs) after exit")
    parser.add_argument("--worker-arg", action="append", default=[], help="extra `epochctl worker` flag")
    parser.add_argument(
        "--coordinator-arg", action="append", default=[], help="extra `epochctl coordinator` flag"
    )
    parser.add_argument("--router-arg", action="append", default=[], help="extra `epochctl router` flag")
    parser.add_argument(
        "--ready-file",
        type=Path,
        default=None,
        help="write the endpoints here, JSON (default WORKDIR/up.json)",
    )
    parser.add_argument(
        "--no-http", action="store_true", help="routers serve no OpenAI-compatible HTTP front (docs/http.md)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from epochserve.app.cli.worker_cmd import resolve_model
    from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec

    model_dir = resolve_model(args.model)  # a wrong --model fails here, before anything starts
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="epochserve-up-"))
    ready_file = args.ready_file or workdir / "up.json"
    spec = LocalClusterSpec(
        model_dir=model_dir,
        workdir=workdir,
        num_workers=args.workers,
        tp=args.tp,
        device=args.device,
        cluster=args.cluster,
        worker_args=tuple(args.worker_arg),
        num_coordinators=args.coordinators,
        coordinator_args=tuple(args.coordinator_arg),
        num_routers=args.routers,
        router_args=tuple(args.router_arg),
        http_front=not args.no_http,
    )
    cluster = LocalCluster(spec)
    stop, started = threading.Event(), threading.Event()
    _stop_on_signals(stop, started)
    what = f"etcd, {args.coordinators} coordinator(s), {args.workers} worker(s) and {args.routers} router(s)"
    say(f"starting {what} in {workdir} ...")
    failed = True  # until it ends as asked: a failure keeps the workdir, whose logs tell why
    try:
        try:
            cluster.start()
            started.set()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the cluster was up (_stop_on_signals)
            failed = False
            return 130  # what a shell reports for a Ctrl-C
        _write_token(cluster, workdir)
        endpoints = describe(cluster, workdir)
        print(json.dumps(endpoints, indent=2), flush=True)
        published = Published(cluster, workdir, ready_file)
        published.write()
        say(f"cluster is up; point other commands at it with\n{exports(endpoints, ready_file)}")
        say("it restarts whatever of it exits; Ctrl-C stops everything")
        supervisor = Supervisor(cluster, on_settled=published.write)
        while not stop.wait(POLL_INTERVAL):
            supervisor.check(stop)
        failed = False
        return 0
    finally:
        say("stopping the cluster ...")
        cluster.stop()
        ready_file.unlink(missing_ok=True)  # its addresses reach nothing any more
        if args.workdir is None and not args.keep and not failed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"logs and etcd data stay in {workdir}")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _stop_on_signals(stop: threading.Event, started: threading.Event) -> None:
    """SIGINT and SIGTERM set `stop`; before the cluster is up they also interrupt its start (which
    stops what it started), rather than letting it load every model first."""

    def handle(signum: int, frame: object) -> None:
        if stop.is_set():
            return  # a second Ctrl-C must not interrupt the shutdown
        stop.set()
        if not started.is_set():
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handle)


def _write_token(cluster: LocalCluster, workdir: Path) -> None:
    token_file = workdir / "admin-token"
    token_file.write_text(cluster.token)
    token_file.chmod(0o600)


def describe(cluster: LocalCluster, workdir: Path) -> dict[str, object]:
    """The endpoints. "admin" is coordinator-0's Admin address, "admins" every coordinator's: any
    of them serves reads and forwards StartRollout/AbortRollout to whichever leads. "openai" is the
    first router's HTTP front (its OpenAI base URL), "http" every router's."""
    http = [
        f"http://{r.info['host']}:{r.info['http_port']}/v1"
        for r in cluster.routers
        if r.info.get("http_port")
    ]
    return {
        "openai": http[0] if http else None,
        "http": http,
        "etcd": cluster.etcd_endpoint,
        "admin": cluster.admin_address,
        "admins": cluster.admin_addresses,
        "admin_token_file": str(workdir / "admin-token"),
        "routers": [r.address for r in cluster.routers],
        "metrics": [f"http://{r.info['host']}:{r.info['metrics_port']}/metrics" for r in cluster.routers],
        "workers": {w.info.get("worker_id", w.name): w.address for w in cluster.workers},
        "pids": pids(cluster),
        "cluster": cluster.spec.cluster,
        "workdir": str(workdir),
    }


def exports(endpoints: dict[str, Any], ready_file: Path) -> str:
    """Shell lines that point `generate`, `workers`, `rollout`, `loadtest` and `verify` at this
    cluster (EPOCHSERVE_UP alone is enough; the others serve tools that do not read it), and
    OpenAI's clients at its HTTP front."""
    from epochserve.app.cli import cluster_flags as flags

    values = {
        flags.UP_ENV: ready_file,
        flags.ROUTER_ENV: endpoints["routers"][0] if endpoints["routers"] else "",
        flags.ADMIN_ENV: endpoints["admin"],
        flags.TOKEN_FILE_ENV: endpoints["admin_token_file"],
        "OPENAI_BASE_URL": endpoints.get("openai") or "",  # the openai client reads it
    }
    return "\n".join(f"  export {name}={value}" for name, value in values.items() if value)


def pids(cluster: LocalCluster) -> dict[str, int | None]:
    out: dict[str, int | None] = {p.name: p.pid for p in cluster.children}
    if cluster.etcd is not None:
        out["etcd"] = cluster.etcd.pid
    return out


class Published:
    """The ready file (when asked for) and WORKDIR/pids.json, rewritten from the cluster as it is."""

    def __init__(self, cluster: LocalCluster, workdir: Path, ready_file: Path) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.ready_file = ready_file

    def write(self) -> None:
        endpoints = describe(self.cluster, self.workdir)
        _replace(self.workdir / "pids.json", endpoints["pids"])
        _replace(self.ready_file, {**endpoints, "pid": os.getpid()})


def _replace(path: Path, body: Any) -> None:
    """Write JSON through a rename, so that a reader never sees half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(body))
    partial.replace(path)


class Supervisor:
    """Keeps every process of the cluster running: whichever exits is started again, with one line
    on stderr. etcd comes back on its own data dir and client port, so the data (epoch, rollouts)
    and everybody's endpoint survive; coordinators, workers and routers come back with their names
    and flags, coordinators and routers on their old ports (LocalCluster.respawn).

    Only etcd is waited for (everything else needs it); the others are checked for readiness on
    later rounds, so one slow start (a worker loading its model) never holds up another restart.
    A process that exits again before it was ready waits FIRST_RETRY_DELAY, doubling up to
    MAX_RETRY_DELAY, before the next try, so one that cannot start does not spin.
    """

    def __init__(self, cluster: LocalCluster, on_settled: Callable[[], None]) -> None:
        self.cluster = cluster
        self.on_settled = on_settled  # called once everything restarted is ready again
        self._starting: set[str] = set()  # restarted, not ready yet
        self._restart_at: dict[str, float] = {}  # exited: restart at this time.monotonic()
        self._delay: dict[str, float] = {}  # the last delay of one that keeps dying before it is ready

    def check(self, stop: threading.Event) -> None:
        """One round: restart what exited, note what became ready."""
        changed = self._check_etcd()
        for process in self.cluster.children:
            if stop.is_set():
                return  # children exiting now were told to by a Ctrl-C in their terminal
            changed |= self._check(process)
        if changed and not self._starting and not self._restart_at:
            self.on_settled()

    def _check_etcd(self) -> bool:
        from epochserve.errors import ConfigError

        etcd = self.cluster.etcd
        if etcd is None or etcd.is_running or not self._is_due("etcd", etcd.returncode):
            return False
        try:
            etcd.start()  # blocks until healthy (seconds): everybody else needs it
        except ConfigError as e:
            say(f"etcd did not start again: {e}")
            self._starting.add("etcd")  # so that the next try waits
            return False
        self._delay.pop("etcd", None)
        return True

    def _check(self, process: ManagedProcess) -> bool:
        name = process.name
        if process.is_running:
            if name in self._starting and process.poll_ready():
                self._starting.discard(name)
                self._delay.pop(name, None)
                return True  # a worker's address is new
            return False
        if not self._is_due(name, process.returncode):
            return False
        self.cluster.respawn(process)
        self._starting.add(name)
        return True

    def _is_due(self, name: str, returncode: int | None) -> bool:
        """Report an exit once; then whether its restart is due."""
        now = time.monotonic()
        if name not in self._restart_at:
            delay = self._delay_before_restart(name)
            self._restart_at[name] = now + delay
            later = f" in {delay:.0f} s (it exited before it was ready)" if delay else ""
            say(f"{name} exited ({returncode}); restarting it{later}")
        if now < self._restart_at[name]:
            return False
        del self._restart_at[name]
        return True

    def _delay_before_restart(self, name: str) -> float:
        if name not in self._starting:  # it had been ready: restart at once
            return 0.0
        self._starting.discard(name)
        delay = min(self._delay.get(name, FIRST_RETRY_DELAY / 2) * 2, MAX_RETRY_DELAY)
        self._delay[name] = delay
        return delay
