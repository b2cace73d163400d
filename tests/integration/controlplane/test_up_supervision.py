"""`epochctl up` heals like the real cluster. A real `epochctl up` (etcd, 2 coordinators, 2 workers of
2 TP ranks each, a router; a tiny random-weight model) serves light load through its router while
one process of each kind it started is SIGKILLed in turn: a worker, the router, the leading
coordinator (in the middle of a rollout), etcd. Each comes back under its name, requests succeed
again, rollouts of published checkpoints reach DONE, etcd's data survives; after SIGINT nothing
that `up` started (TP ranks and etcd included) is left."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from fixtures.models import build_tiny_model
from safetensors.torch import load_file
from up_kit import Load, ProcessTracker, is_alive, wait_until

from epochserve.app.local.processes import EPOCHCTL
from epochserve.client.publisher import PolicyPublisher
from epochserve.controlplane.admin.client import AdminClient
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.worker.weights.manifest import Manifest

LEASE_TTL = 3  # seconds: coordinators' leader lease (a killed leader is replaced after it)
UP_FLAGS = (
    "--workers", "2", "--tp", "2", "--coordinators", "2", "--routers", "1",
    f"--coordinator-arg=--lease-ttl={LEASE_TTL}", "--worker-arg=--lease-ttl=8", "--router-arg=--lease-ttl=8",
)  # fmt: skip
# Seconds, sized for a busy 2-core machine: `up` starting 7 Python processes that import torch...
START_TIMEOUT = 300.0
# ... one of them coming back and requests succeeding through the router again ...
RECOVERY_TIMEOUT = 120.0
# ... a rollout of the tiny model, a leader election (LEASE_TTL) included ...
ROLLOUT_TIMEOUT = 90.0
# ... and everything stopping after SIGINT (each process gets 30 s before SIGKILL).
STOP_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Path]]:
    """The model `up` starts with (version 0), and published checkpoints of versions 1-3, each
    with weights of its own."""
    root = tmp_path_factory.mktemp("up-versions")
    start = build_tiny_model("llama", root / "A", seed=0)
    checkpoints = {}
    for version in (1, 2, 3):
        raw = build_tiny_model("llama", root / f"raw{version}", seed=version)
        weights = load_file(raw / "model.safetensors")
        checkpoints[version] = PolicyPublisher.save_checkpoint(
            version, weights, root / f"v{version}", config_from=start
        )
    return start, checkpoints


class Up:
    """A running `epochctl up` and the files it keeps current (its ready file, WORKDIR/pids.json)."""

    def __init__(self, tmp_path: Path, model_dir: Path) -> None:
        self.workdir = tmp_path / "cluster"
        self.ready_file = tmp_path / "up.json"
        self.log_path = tmp_path / "up.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*EPOCHCTL, "up", "--model", str(model_dir), "--workdir", str(self.workdir),
                 "--ready-file", str(self.ready_file), *UP_FLAGS],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self) -> dict:
        wait_until(
            lambda: self.ready_file.is_file() or self.process.poll() is not None,
            START_TIMEOUT,
            "`epochctl up` to be ready",
        )
        assert self.process.poll() is None, f"`epochctl up` exited:\n{self.log()}"
        return self.info()

    def info(self) -> dict:
        return json.loads(self.ready_file.read_text())

    def pids(self) -> dict[str, int | None]:
        return json.loads((self.workdir / "pids.json").read_text())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def kill(self, name: str) -> float:
        """SIGKILL process `name` and wait until `up` reports it back (a new pid, ready); returns
        when it was killed (time.monotonic())."""
        old = self.pids()[name]
        assert old is not None and is_alive(old), f"{name} is not running:\n{self.log()}"
        killed_at = time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_until(
            lambda: self.pids()[name] not in (None, old),
            RECOVERY_TIMEOUT,
            f"{name} to be restarted",
            on_timeout=self.log,
        )
        return killed_at

    def stop(self) -> int:
        """SIGINT, as Ctrl-C would; returns its exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(30)
            raise AssertionError(f"`up` ignored SIGINT for {STOP_TIMEOUT} s:\n{self.log()}") from None


class Admin:
    """Admin calls through whichever coordinator answers: one may be dead or restarting, and while
    a new leader is elected they answer UNAVAILABLE, which is retried until the deadline."""

    def __init__(self, addresses: list[str], token: str) -> None:
        self.addresses = addresses
        self.token = token

    def call(self, fn: Callable[[AdminClient], object], timeout: float, addresses: list[str] | None = None):
        deadline = time.monotonic() + timeout
        while True:
            for address in addresses or self.addresses:
                try:
                    return asyncio.run(self._once(address, fn))
                except grpc.aio.AioRpcError as e:
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    if time.monotonic() > deadline:
                        raise AssertionError(f"Admin kept failing for {timeout} s: {e}") from None
            time.sleep(0.2)

    async def _once(self, address: str, fn: Callable[[AdminClient], object]):
        async with AdminClient(address, self.token) as admin:
            return await fn(admin)

    def leader(self) -> tuple[str, str]:
        """(id, Admin address) of the leading coordinator, once one leads."""
        found: list[tuple[str, str]] = []

        def leads() -> bool:
            reply = self.call(lambda admin: admin.list_workers(timeout=5), RECOVERY_TIMEOUT)
            found[:] = [(reply.leader_id, reply.leader_address)]
            return bool(reply.leader_id)

        wait_until(leads, ROLLOUT_TIMEOUT, "a coordinator to lead")
        return found[0]

    def start(self, version: int, path: Path, via: str) -> None:
        """StartRollout of a published checkpoint through the coordinator at `via`, not waiting.
        ALREADY_EXISTS counts as started: an earlier try got through before its reply was lost."""
        request = pb.StartRolloutRequest(
            version=version, source=str(path), drain=pb.DRAIN_POLICY_FINISH,
            manifest_checksum=Manifest.read(path).checksum,
        )  # fmt: skip
        try:
            self.call(lambda admin: admin.start_rollout(request, timeout=10), ROLLOUT_TIMEOUT, [via])
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise

    def publish(self, version: int, path: Path, via: str) -> None:
        """What a trainer does: save a checkpoint (done by the fixture), start its rollout, wait for DONE."""
        self.start(version, path, via)
        self.wait_done(version)

    def wait_done(self, version: int) -> None:
        def done() -> bool:
            status = self.call(lambda admin: admin.get_rollout(version, timeout=5), ROLLOUT_TIMEOUT)
            assert status.rollout.phase != pb.ROLLOUT_PHASE_ABORTED, status.rollout.reason
            return status.rollout.phase == pb.ROLLOUT_PHASE_DONE

        wait_until(done, ROLLOUT_TIMEOUT, f"rollout v{version} to be DONE")

    def rollouts(self) -> tuple[int, dict[int, int]]:
        """(committed epoch, {version: phase}) as etcd holds them."""
        reply = self.call(lambda admin: admin.list_rollouts(None, timeout=5), RECOVERY_TIMEOUT)
        return reply.committed_epoch, {r.version: r.phase for r in reply.rollouts}


@pytest.mark.slow
def test_up_restarts_every_process_it_started_and_stops_them_all(versions, tmp_path):
    start_model, checkpoints = versions
    up = Up(tmp_path, start_model)
    tracker = ProcessTracker(up.process.pid)
    try:
        info = up.wait_ready()
        assert info["admin"] == info["admins"][0] and len(info["admins"]) == 2
        admin = Admin(info["admins"], Path(info["admin_token_file"]).read_text())
        with Load(info["routers"][0]) as load:
            tracker.sample()
            assert len(tracker.seen) >= 1 + 2 + 2 * 2 + 1, tracker.seen  # etcd, coordinators, ranks, router
            load.wait_served(after=time.monotonic(), timeout=RECOVERY_TIMEOUT)

            for name in ("worker-1", "router-0"):
                killed_at = up.kill(name)
                tracker.sample()
                load.wait_served(after=killed_at, timeout=RECOVERY_TIMEOUT)

            # The leader dies right after it started a rollout (still in flight on a busy machine;
            # DONE must follow either way): the standby takes over and ends it.
            leader_id, leader_address = admin.leader()
            [standby] = [address for address in info["admins"] if address != leader_address]
            admin.start(1, checkpoints[1], via=standby)  # forwarded to the leader
            killed_at = up.kill(leader_id)
            tracker.sample()
            admin.wait_done(1)
            admin.publish(2, checkpoints[2], via=info["admin"])  # coordinator-0, whichever role it has now
            load.wait_served(after=time.monotonic(), timeout=RECOVERY_TIMEOUT, version=2)
            # Requests never pass through a coordinator: losing one costs none of them.
            assert load.failures(since=killed_at) == [], "requests failed while only a coordinator was down"

            killed_at = up.kill("etcd")
            tracker.sample()
            epoch, phases = admin.rollouts()  # the data outlived etcd's process
            assert epoch == 2 and phases == {1: pb.ROLLOUT_PHASE_DONE, 2: pb.ROLLOUT_PHASE_DONE}
            load.wait_served(after=killed_at, timeout=RECOVERY_TIMEOUT)
            admin.publish(3, checkpoints[3], via=info["admin"])
            load.wait_served(after=time.monotonic(), timeout=RECOVERY_TIMEOUT, version=3)
            tracker.sample()
        assert not load.unexpected, load.unexpected[:5]
        assert up.info()["pids"] == up.pids()  # the ready file is kept current too
        restarts = [line for line in up.log().splitlines() if "restarting it" in line]
        assert [line.split()[0] for line in restarts] == ["worker-1", "router-0", leader_id, "etcd"], up.log()
    finally:
        code = up.stop()
    assert code == 0, up.log()
    left = tracker.alive()
    assert not left, f"still running after `epochctl up` stopped: {left}"


def test_etcd_dies_with_the_process_that_started_it(tmp_path):
    """A launcher killed with SIGKILL (no chance to stop anything) takes its etcd along."""
    script = (
        "import sys, time; from pathlib import Path\n"
        "from epochserve.app.local.etcd_launcher import EtcdServer\n"
        "server = EtcdServer(Path(sys.argv[1])); server.start()\n"
        "print(server.pid, flush=True); time.sleep(600)\n"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-P", "-c", script, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True
    )
    etcd_pid = None
    try:
        etcd_pid = int(launcher.stdout.readline())
        assert is_alive(etcd_pid)
        launcher.kill()
        launcher.wait(30)
        wait_until(lambda: not is_alive(etcd_pid), 30, "etcd to die with its launcher")
    finally:
        launcher.kill()
        launcher.wait(30)
        if etcd_pid is not None and is_alive(etcd_pid):  # the failure above: leave nothing behind
            os.kill(etcd_pid, signal.SIGKILL)
