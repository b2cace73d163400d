"""Channel: a bounded FIFO from a request's task to the HTTP response that reads it (run.py).

asyncio.Queue does this job with bookkeeping the front never uses (task_done counts, a deque of
waiting getters, a future per wait, three method calls per put): every worker message of every
stream goes through here, so the per-message cost is kept to a deque append and, only when the
reader sleeps, one future. The reader takes everything queued at once (take_all).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Channel(Generic[T]):
    def __init__(self, size: int) -> None:
        self._items: deque[T] = deque()
        self._size = size
        self._readable: asyncio.Future[None] | None = None  # the reader waits for an item
        self._writable: asyncio.Future[None] | None = None  # writers wait for room (shared)

    async def put(self, item: T) -> None:
        """Queue `item`; when the channel is full, wait until the reader took something (so that a
        slow client slows the worker stream down)."""
        while len(self._items) >= self._size:
            if self._writable is None:
                self._writable = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._writable)  # shared by every writer: one's cancel is its own
        self._items.append(item)
        readable = self._readable
        if readable is not None:
            self._readable = None
            if not readable.done():
                readable.set_result(None)

    async def get(self) -> T:
        """The oldest item, once there is one."""
        while not self._items:
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable
        item = self._items.popleft()
        self._room_made()
        return item

    def take_all(self) -> list[T]:
        """Every item queued now, oldest first (none: [])."""
        if not self._items:
            return []
        items = list(self._items)
        self._items.clear()
        self._room_made()
        return items

    async def take_settled(self, turns: int, is_last: Callable[[T], bool]) -> list[T]:
        """take_all(), once the writers that are ready to run had up to `turns` turns of the event
        loop while each turn queued more: after a turn that queued nothing, once the channel is
        full, or once its newest item `is_last`. The turns before the last are plain callbacks that
        look at the channel; the last is the reader's own wake-up (one resumption of its stack of
        generators, which costs more than a callback, rather than one per turn)."""
        if turns <= 0 or (self._items and is_last(self._items[-1])):
            return self.take_all()
        if turns == 1:
            await asyncio.sleep(0)
            return self.take_all()
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def turn(left: int, seen: int) -> None:  # `left`: turns to go, this one included
            if woken.done():  # the reader was cancelled
                return
            num = len(self._items)
            if left <= 2 or num == seen or num >= self._size or (num and is_last(self._items[-1])):
                woken.set_result(None)  # the reader's wake-up is the last turn
            else:
                loop.call_soon(turn, left - 1, num)

        loop.call_soon(turn, turns, len(self._items))
        await woken
        return self.take_all()

    def _room_made(self) -> None:
        writable = self._writable
        if writable is not None:
            self._writable = None
            if not writable.done():
                writable.set_result(None)
