"""PolicyWatcher: what version the target router pins to, and when its rollout was DONE, polled.

GetPolicy answers the version new requests pin to and whether that version's rollout is DONE in
the router's view of etcd. The first answer naming (v, DONE) is an observation made after the
coordinator wrote DONE, so it is a valid DONE time for the freshness check (purity.py), as is the
soak driver's WatchRollout message; the VersionLog keeps the earliest of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from epochserve.client.errors import GenerationError
from epochserve.client.generation import AsyncGenerationClient, PolicyInfo
from epochserve.loadtest.records import VersionLog

logger = logging.getLogger(__name__)

POLL_TIMEOUT_SECONDS = 2.0  # one GetPolicy; a router restarting is simply not observed meanwhile


class PolicyWatcher:
    def __init__(
        self,
        client: AsyncGenerationClient,
        versions: VersionLog,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.versions = versions
        self.interval = interval
        self.clock = clock
        self.latest: PolicyInfo | None = None  # for the progress display
        self.num_failed_polls = 0

    async def poll(self) -> PolicyInfo | None:
        """One GetPolicy; records what it saw. None when the router did not answer."""
        try:
            info = await self.client.get_policy(timeout=POLL_TIMEOUT_SECONDS)
        except GenerationError as exc:
            self.num_failed_polls += 1
            logger.debug("GetPolicy failed: %s", exc)
            return None
        at = self.clock()  # after the answer arrived: later than what it describes
        self.versions.observe_pinned(info.policy_version, at)
        if info.rollout_done:
            self.versions.observe_done(info.policy_version, at)
        self.latest = info
        return info

    async def run(self, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds until `stop` is set."""
        while not stop.is_set():
            await self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
