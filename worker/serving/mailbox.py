"""Mailbox: the engine thread's outputs to asyncio queues on one event loop, one wake-up per batch.

`loop.call_soon_threadsafe` per output writes to the loop's wake-up pipe each time: a system call
and a callback for every sample of every step (hundreds a step in an RL rollout), taken on the
engine thread. The mailbox appends under a lock instead and wakes the loop only when it was
empty, so a step's outputs cross in one callback, in the order they were put.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Any], Any]] = []

    def put(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """From any thread: queue.put_nowait(item) on the loop, soon. Never blocks."""
        with self._lock:
            self._items.append((queue, item))
            wake = len(self._items) == 1
        if wake:
            self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, item in items:
            queue.put_nowait(item)
