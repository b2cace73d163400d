"""Test harness of the control plane: run scenarios, wait on conditions, a
coordinator in-process or as a real `epochctl coordinator` process, and etcd history readers.

Everything here talks to the real etcd of the fixtures; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
from fixtures.etcd import EtcdCluster
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epochserve.app.local.processes import EPOCHCTL
from epochserve.controlplane.admin.client import AdminClient
from epochserve.controlplane.admin.server import start_admin_server
from epochserve.controlplane.coordinator.config import CoordinatorConfig
from epochserve.controlplane.coordinator.process import Coordinator
from epochserve.controlplane.store import codec
from epochserve.controlplane.store.client import EtcdStore, prefix_end
from epochserve.controlplane.store.keyspace import Keyspace
from epochserve.controlplane.store.records import RolloutRecord
from epochserve.controlplane.store.state import ClusterState, read_state
from epochserve.errors import StoreUnavailableError
from epochserve.net import free_port
from epochserve.proto.v1 import admin_pb2 as pb

T = TypeVar("T")
TOKEN = "test-admin-token-0123456789"
LEASE_TTL = 2  # seconds: every lease in these tests


def run(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run a scenario; fail it (rather than hang) after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll an async condition every 50 ms; AssertionError naming `what` after `timeout` seconds.
    A condition that cannot read etcd (just restarted, say) counts as not met yet."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(StoreUnavailableError):
            if await condition():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def coordinator_config(etcd: EtcdCluster, **overrides: Any) -> CoordinatorConfig:
    settings: dict[str, Any] = {
        "cluster": etcd.cluster,
        "etcd": etcd.config,
        "token": TOKEN,
        "admin_port": free_port(),
        "lease_ttl": LEASE_TTL,
        "stage_timeout": 30.0,
        "commit_timeout": 30.0,
    }
    return CoordinatorConfig(**(settings | overrides))


class InProcessCoordinator:
    """A coordinator with its Admin server in the test's event loop."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.coordinator = Coordinator(config)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return self.config.admin_address

    async def __aenter__(self) -> InProcessCoordinator:
        self._server = await start_admin_server(self.coordinator)
        self._task = asyncio.create_task(self.coordinator.run(self._stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task:
            await self._task
        if self._server:
            await self._server.stop(grace=None)

    async def wait_leading(self, timeout: float = 10.0) -> None:
        async def leads() -> bool:
            return self.coordinator.is_leader

        await wait_until(leads, timeout, f"{self.config.coordinator_id} to lead")

    def admin(self, token: str = TOKEN) -> AdminClient:
        return AdminClient(self.address, token)


async def leading(
    stack: contextlib.AsyncExitStack, etcd: EtcdCluster, **overrides: Any
) -> InProcessCoordinator:
    """An in-process coordinator entered on `stack`, once it leads."""
    coordinator = await stack.enter_async_context(InProcessCoordinator(coordinator_config(etcd, **overrides)))
    await coordinator.wait_leading()
    return coordinator


def start_request(version: int, drain: int = pb.DRAIN_POLICY_FINISH, **fields: Any) -> pb.StartRolloutRequest:
    fields.setdefault("source", f"/ckpt/v{version}")
    return pb.StartRolloutRequest(version=version, drain=drain, **fields)


class CoordinatorProcess:
    """A real `epochctl coordinator` process (through the shim), for kill/pause tests."""

    def __init__(self, etcd: EtcdCluster, coordinator_id: str, log_dir: Path, *extra: str) -> None:
        self.coordinator_id = coordinator_id
        self.port = free_port()
        self.log_path = log_dir / f"{coordinator_id}.log"
        command = [
            *EPOCHCTL, "--log-level=INFO", "coordinator",
            f"--etcd-endpoints={etcd.server.endpoint}", f"--cluster={etcd.cluster}",
            f"--admin-port={self.port}", f"--id={coordinator_id}", f"--lease-ttl={LEASE_TTL}", *extra,
        ]  # fmt: skip
        env = os.environ | {"EPOCHSERVE_ADMIN_TOKEN": TOKEN}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def wait_serving(self, timeout: float = 20.0) -> None:
        """Until its health service answers SERVING."""

        async def serving() -> bool:
            assert self.process.poll() is None, f"coordinator exited:\n{self.log()}"
            async with grpc.aio.insecure_channel(self.address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
            return False

        await wait_until(serving, timeout, f"{self.coordinator_id} to serve")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def cluster_state(etcd: EtcdCluster) -> ClusterState:
    store = EtcdStore(etcd.config)
    try:
        return await read_state(store, Keyspace(etcd.cluster))
    finally:
        await store.close()


async def wait_for_rollout(
    etcd: EtcdCluster, version: int, phase: str, timeout: float = 20.0
) -> RolloutRecord:
    """Until rollouts/<version> is in `phase` (e.g. "DONE"); returns the record."""
    found: list[RolloutRecord] = []

    async def reached() -> bool:
        stored = (await cluster_state(etcd)).rollouts.get(version)
        found[:] = [stored.value] if stored else []
        return bool(found) and found[0].phase == phase

    await wait_until(
        reached, timeout, f"v{version} to be {phase} (now {found[0].phase if found else 'absent'})"
    )
    return found[0]


async def key_history(
    etcd: EtcdCluster, key: bytes, is_prefix: bool = False
) -> list[tuple[int, bytes, bytes]]:
    """Every put on `key` (or under the prefix) since the store began: (revision, key, value).
    etcd keeps all revisions until compaction, which these tests never run."""
    store = EtcdStore(etcd.config)
    try:
        end = prefix_end(key) if is_prefix else key + b"\0"
        _, entries = (
            await store.get_prefix(key) if is_prefix else (0, [e for e in [await store.get(key)] if e])
        )
        last = max((e.mod_revision for e in entries), default=0)
        puts: list[tuple[int, bytes, bytes]] = []
        if last:
            async for events in store.watch(key, end, 1):
                puts += [
                    (e.entry.mod_revision, e.entry.key, e.entry.value) for e in events if not e.is_delete
                ]
                if events and events[-1].entry.mod_revision >= last:
                    break
        return puts
    finally:
        await store.close()


def decoded(history: list[tuple[int, bytes, bytes]], kind: type[T]) -> list[tuple[int, T]]:
    return [(rev, codec.decode(kind, value, key.decode())) for rev, key, value in history]  # type: ignore[type-var]
