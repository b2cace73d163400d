"""WorkerRegistry: the workers this router can dial, kept in step with the control plane's view.

`update(view)` is fed every ClusterView the router's participant observes (router/epochs.py):
new workers get a channel (and their model limits are read once with GetWorkerInfo), changed
ones their new record, and workers that left stop receiving requests at once; their channel is
closed only when this router's last request there has ended, because a worker that deregisters
to shut down still drains what it runs. A worker that comes back under the same id at another
address is a new handle.

A worker whose call failed in transport (killed, unreachable) is "suspect" for a few seconds: the
policies avoid it while any other worker serves the version, because the control plane drops it
only when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import grpc

from epochserve.channels import ClientTls
from epochserve.controlplane.participants.router import ClusterView, WorkerView
from epochserve.controlplane.store.etcd_config import split_host_port
from epochserve.errors import ConfigError
from epochserve.proto.v1 import worker_pb2, worker_pb2_grpc
from epochserve.router.load import WorkerLoad
from epochserve.router.session import WorkerSession
from epochserve.router.waiting import Changes
from epochserve.sampling import ModelLimits

logger = logging.getLogger(__name__)

INFO_TIMEOUT_SECONDS = 5.0
INFO_ATTEMPTS = 3


@dataclass(eq=False, slots=True)
class WorkerHandle:
    """One dialable worker: its latest record, its channel, and this router's load on it."""

    view: WorkerView
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.WorkerStub
    session: WorkerSession  # the one Session stream this router's requests there share
    load: WorkerLoad = field(default_factory=WorkerLoad)
    limits: ModelLimits | None = None  # read with GetWorkerInfo after it appeared
    model_path: str = ""  # the model directory it reported with its limits
    suspect_until: float = 0.0  # time.monotonic(): avoid until then (a call failed in transport)
    is_removed: bool = False  # left the cluster (or moved): no new requests

    @property
    def worker_id(self) -> str:
        return self.view.worker_id

    @property
    def key(self) -> str:
        """Identity of this incarnation: a worker back at another address is another handle."""
        return f"{self.view.worker_id}@{self.view.address}"


class WorkerRegistry:
    """Use from the router's event loop only. `dial(address)` opens a channel to a worker."""

    def __init__(
        self,
        changes: Changes,
        dial: Callable[[str], grpc.aio.Channel],
        *,
        max_seqs_per_worker: int = 0,
        suspect_seconds: float = 2.0,
        on_closed: Callable[[str], None] | None = None,
        use_session_link: bool = True,
        link_tls: ClientTls | None = None,
    ) -> None:
        self.changes = changes
        self.use_session_link = use_session_link  # False: always gRPC Session (comparisons, debugging)
        self.link_tls = link_tls  # TLS of the session links (the router's TLS to workers)
        self.view = ClusterView(0, 0, ())
        self.max_seqs_per_worker = max_seqs_per_worker  # 0: no bound (the workers queue)
        self.suspect_seconds = suspect_seconds
        self._dial = dial
        self._on_closed = on_closed or (lambda worker_id: None)
        self._handles: dict[str, WorkerHandle] = {}  # by worker id, sorted
        self._retiring: list[WorkerHandle] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def handles(self) -> list[WorkerHandle]:
        return list(self._handles.values())

    @property
    def limits(self) -> ModelLimits | None:
        """The tightest limits the known workers reported; None before any answered."""
        known = [h.limits for h in self._handles.values() if h.limits is not None]
        if not known:
            return None
        return ModelLimits(
            vocab_size=min(lim.vocab_size for lim in known),
            max_model_len=min(lim.max_model_len for lim in known),
            max_n=min(lim.max_n for lim in known),
        )

    @property
    def model_path(self) -> str:
        """The model directory a known worker reported; "" before any answered."""
        return next((h.model_path for h in self._handles.values() if h.model_path), "")

    def update(self, view: ClusterView) -> None:
        """Take the workers of `view` (a newer revision than the last one)."""
        self.view = view
        seen = {w.worker_id: w for w in view.workers}
        for worker_id, old in list(self._handles.items()):
            if seen.get(worker_id) is None or seen[worker_id].address != old.view.address:
                self._retire(self._handles.pop(worker_id))
        for worker_id, worker in seen.items():
            handle = self._handles.get(worker_id)
            if handle is None:
                self._handles[worker_id] = self._add(worker)
            else:
                if worker.serving_version != handle.view.serving_version:
                    # when this router can send the new version there: a rollout's timeline in logs
                    logger.info("worker %s serves v%d", worker_id, worker.serving_version)
                handle.view = worker
        self._handles = dict(sorted(self._handles.items()))
        self.changes.notify()

    def candidates(self, version: int, excluded: set[str]) -> list[WorkerHandle]:
        """Handles that may take a request pinned to `version` now, by worker id: READY, serving
        exactly `version`, with room. Among them, in order of preference: those not in `excluded`
        (keys the request failed on) and not suspect; those not excluded; and, when nothing else
        serves the version, excluded ones once no longer suspect — a lone worker that had a
        hiccup (fenced, then back) is tried again rather than waited on (bounded by max_attempts).
        """
        now = time.monotonic()
        fit = [
            h
            for h in self._handles.values()
            if h.view.is_ready
            and h.view.serving_version == version
            # counted per version, as the worker's slots are (an overlapping worker runs two)
            and (not self.max_seqs_per_worker or h.load.seqs_by_version[version] < self.max_seqs_per_worker)
        ]
        fresh = [h for h in fit if h.key not in excluded]
        if fresh:
            return [h for h in fresh if h.suspect_until <= now] or fresh
        return [h for h in fit if h.suspect_until <= now]

    def seconds_until_retry(self, version: int) -> float | None:
        """When a suspect worker serving `version` may be tried again (None: none is suspect)."""
        now = time.monotonic()
        waits = [
            h.suspect_until - now
            for h in self._handles.values()
            if h.view.serving_version == version and h.suspect_until > now
        ]
        return min(waits) if waits else None

    def serves(self, version: int) -> bool:
        """Whether any READY worker serves `version` (room and exclusions aside)."""
        return any(h.view.is_ready and h.view.serving_version == version for h in self._handles.values())

    def mark_suspect(self, handle: WorkerHandle) -> None:
        handle.suspect_until = time.monotonic() + self.suspect_seconds

    def released(self, handle: WorkerHandle) -> None:
        """A request on `handle` ended: close a retired worker's channel once idle; wake requests
        waiting for room."""
        if handle.is_removed and handle.load.requests == 0 and handle in self._retiring:
            self._retiring.remove(handle)
            self._spawn(self._close(handle))
        if self.max_seqs_per_worker:
            self.changes.notify()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for handle in [*self._handles.values(), *self._retiring]:
            await handle.session.close()
            await handle.channel.close()
        self._handles.clear()
        self._retiring.clear()

    def _add(self, worker: WorkerView) -> WorkerHandle:
        channel = self._dial(worker.address)
        stub = worker_pb2_grpc.WorkerStub(channel)
        link_host = self._link_host(worker.address) if self.use_session_link else None
        session = WorkerSession(stub, worker.worker_id, link_host=link_host, tls=self.link_tls)
        handle = WorkerHandle(worker, channel, stub, session)
        logger.info(
            "worker %s at %s joined (serving v%d)", worker.worker_id, worker.address, worker.serving_version
        )
        self._spawn(self._read_limits(handle))
        return handle

    @staticmethod
    def _link_host(address: str) -> str | None:
        """The host of a worker's address, where its session link listens; None when the address
        is malformed (its gRPC dial fails on its own; no link is tried)."""
        try:
            return split_host_port(address)[0]
        except ConfigError:
            return None

    def _retire(self, handle: WorkerHandle) -> None:
        logger.info("worker %s at %s left", handle.worker_id, handle.view.address)
        handle.is_removed = True
        self._retiring.append(handle)
        self.released(handle)

    async def _read_limits(self, handle: WorkerHandle) -> None:
        for attempt in range(INFO_ATTEMPTS):
            try:
                info = await handle.stub.GetWorkerInfo(
                    worker_pb2.GetWorkerInfoRequest(), timeout=INFO_TIMEOUT_SECONDS
                )
            except grpc.aio.AioRpcError as exc:
                logger.info("GetWorkerInfo of %s failed (%s)", handle.key, exc.code().name)
                await asyncio.sleep(0.5 * (attempt + 1))
                continue
            handle.limits = ModelLimits(info.vocab_size, info.max_model_len, info.max_n or 1)
            handle.model_path = info.model_path
            return

    async def _close(self, handle: WorkerHandle) -> None:
        with contextlib.suppress(Exception):
            await handle.session.close()
            await handle.channel.close()
        if handle.worker_id not in self._handles:
            self._on_closed(handle.worker_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
