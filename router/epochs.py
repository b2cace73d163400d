"""ControlPlaneFollower: feeds a router from its RouterParticipant (docs/design.md §5 step 4).

Two loops on the router's event loop:
- epochs: for each committed epoch the participant observes (strictly increasing), switch
  admission first, then ack — the ack is the router's promise behind a rollout's DONE (I2), so it
  must never run ahead of the switch;
- views: every newer ClusterView goes to the WorkerRegistry (workers joining, leaving, moving to
  a new version, turning READY).

Failure mode: a loop that dies (a control-plane bug such as an epoch going back) ends the router
(fail-stop; `failure` says why) rather than leave it admitting on a version it no longer follows.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any

from epochserve.controlplane.participants.router import ClusterView, RouterParticipant
from epochserve.router.core import RouterCore

logger = logging.getLogger(__name__)


class ControlPlaneFollower:
    def __init__(self, participant: RouterParticipant, core: RouterCore) -> None:
        self.participant = participant
        self.core = core
        self._tasks: list[asyncio.Task[None]] = []
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._guard(self._follow_views()), name="router-views"),
            asyncio.create_task(self._guard(self._follow_epochs()), name="router-epochs"),
        ]

    async def wait_first_epoch(self, timeout: float) -> int:
        """The first committed epoch admission switched to; TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout):
            while self.core.admission.version is None:
                if self.failure is not None:
                    raise self.failure
                await self.core.admission.changes.wait(0.1)
        return self.core.admission.version

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _follow_epochs(self) -> None:
        async for epoch in self.participant.epochs():
            self.core.switch_to(epoch)
            await self.participant.ack_epoch(epoch)  # only now: admission pins >= epoch
            logger.info("router %s acked policy version %d", self.core.router_id, epoch)

    async def _follow_views(self) -> None:
        revision = -1
        while True:
            view = await self.participant.wait_view(functools.partial(_is_newer, revision), None)
            revision = view.revision
            self.core.registry.update(view)

    async def _guard(self, loop: Coroutine[Any, Any, None]) -> None:
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            logger.exception("router %s: control-plane loop failed; stopping", self.core.router_id)
            self.failure = exc
            self.failed.set()


def _is_newer(revision: int, view: ClusterView) -> bool:
    return view.revision > revision
