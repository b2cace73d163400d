"""Small asyncio helpers shared by the control plane."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """`cancel_on`'s interrupt finished before its work."""


async def cancel_on(work: Awaitable[T], interrupt: Awaitable[object]) -> T:
    """Await `work` unless `interrupt` finishes first: then cancel `work` and raise Interrupted.
    Either way nothing is left running; `work`'s own exceptions propagate."""
    work_task = asyncio.ensure_future(work)
    interrupt_task = asyncio.ensure_future(interrupt)
    try:
        await asyncio.wait({work_task, interrupt_task}, return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return work_task.result()
        raise Interrupted
    finally:
        for task in (work_task, interrupt_task):
            task.cancel()
        await asyncio.gather(work_task, interrupt_task, return_exceptions=True)
