"""Protocol-level fake workers and routers: real participant clients with no model behind them,
following directives instantly (or as a test tells them), recording what they saw."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Self

from fixtures.etcd import EtcdCluster
from harness import LEASE_TTL, wait_until

from epochserve.controlplane.participants.base import Participant
from epochserve.controlplane.participants.directives import Abort, Commit, Directive, Fenced, Stage
from epochserve.controlplane.participants.router import RouterParticipant
from epochserve.controlplane.participants.worker import WorkerIdentity, WorkerParticipant
from epochserve.controlplane.store.etcd_config import EtcdConfig
from epochserve.controlplane.store.records import DrainPolicy, DrainReport
from epochserve.net import free_port


class _Following:
    """Starts the participant, follows it in a task until the context ends, then deregisters."""

    participant: Participant
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.participant.start(timeout=10)
        self._task = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.participant.close()

    async def _follow(self) -> None:
        raise NotImplementedError


@dataclass
class FakeWorker(_Following):
    """A worker that follows directives instantly: stages by reporting `checksum`, swaps by
    reporting `fp-<v>`, releases on abort. `stage_gate` holds staging until set; `ignore_commits`
    makes a worker that never swaps; `fail_stage` reports a stage failure instead. A drain=overlap
    commit is served at once with the old version retiring until `retire_gate` is set."""

    etcd: EtcdCluster
    worker_id: str
    checksum: str = "sum-good"
    serving_version: int = 0
    etcd_config: EtcdConfig | None = None  # default: the fixture's (a proxy's to partition it)
    fail_stage: str | None = None
    ignore_commits: bool = False
    register_timeout: float = 10.0
    seen: list[Directive] = field(default_factory=list)
    stale_reports: list[int] = field(default_factory=list)  # versions whose report came back False
    stage_gate: asyncio.Event = field(default_factory=asyncio.Event)
    retire_gate: asyncio.Event = field(default_factory=asyncio.Event)
    participant: WorkerParticipant = field(init=False)

    def __post_init__(self) -> None:
        self.stage_gate.set()
        identity = WorkerIdentity(self.worker_id, f"127.0.0.1:{free_port()}", tp_size=2, capacity=64)
        self.participant = WorkerParticipant(
            self.etcd_config or self.etcd.config,
            self.etcd.cluster,
            identity,
            serving_version=self.serving_version,
            lease_ttl=LEASE_TTL,
            register_timeout=self.register_timeout,
        )

    def of_kind(self, kind: type) -> list[Any]:
        return [d for d in self.seen if isinstance(d, kind)]

    async def wait_seen(self, directive: Directive, timeout: float = 10.0) -> None:
        async def seen() -> bool:
            return directive in self.seen

        await wait_until(seen, timeout, f"{self.worker_id} to see {directive}")

    async def wait_staging(self, version: int, timeout: float = 10.0) -> None:
        """Until this worker was told to stage `version`."""

        async def staging() -> bool:
            return any(d.version == version for d in self.of_kind(Stage))

        await wait_until(staging, timeout, f"{self.worker_id} to stage v{version}")

    async def _follow(self) -> None:
        p = self.participant
        async for d in p.directives():
            self.seen.append(d)
            if isinstance(d, Stage):
                await self.stage_gate.wait()
                if self.fail_stage:
                    accepted = await p.report_failure(d.version, self.fail_stage)
                else:
                    accepted = await p.report_staged(d.version, self.checksum)
                if not accepted:
                    self.stale_reports.append(d.version)
            elif isinstance(d, Commit) and not self.ignore_commits:
                if d.drain is DrainPolicy.OVERLAP:
                    await self._overlap(d.version)
                else:
                    await p.report_serving(d.version, f"fp-{d.version}")
            elif isinstance(d, Abort):
                await p.report_released(d.version)
            elif isinstance(d, Fenced):
                self.ignore_commits = False  # a fenced worker comes back well behaved

    async def _overlap(self, version: int) -> None:
        p, old = self.participant, self.participant.serving_version
        await p.report_serving(version, f"fp-{version}", retiring=old)
        await p.report_drain(DrainReport(version, DrainPolicy.OVERLAP, 0.01, None))
        await self.retire_gate.wait()
        await p.report_retired(old, f"fp-{version}")
        await p.report_drain(DrainReport(version, DrainPolicy.OVERLAP, 0.01, 2.5, finished_previous=4))


@dataclass
class FakeRouter(_Following):
    """A router that switches admission and acks every epoch it observes, recording them."""

    etcd: EtcdCluster
    router_id: str
    epochs: list[int] = field(default_factory=list)
    participant: RouterParticipant = field(init=False)

    def __post_init__(self) -> None:
        address = f"127.0.0.1:{free_port()}"
        self.participant = RouterParticipant(
            self.etcd.config, self.etcd.cluster, self.router_id, address, lease_ttl=LEASE_TTL
        )

    async def _follow(self) -> None:
        async for epoch in self.participant.epochs():
            self.epochs.append(epoch)
            await self.participant.ack_epoch(epoch)
