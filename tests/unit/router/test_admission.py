"""Admission: version pinning (I2), holds for min_policy_version, bounded per-version queues."""

import asyncio

import pytest

from epochserve.errors import RequestAbortedError
from epochserve.router.admission import Admission, QueueLimits
from epochserve.router.errors import NoWorkerError, QueueFullError, WaitDeadlineError
from epochserve.router.waiting import Changes, Deadline

NO_DEADLINE = Deadline(None)


def admission(max_queue=8, max_wait=5.0, depths=None):
    hook = None if depths is None else (lambda version, depth: depths.append((version, depth)))
    return Admission(QueueLimits(max_queue, max_wait, retry_after_seconds=0.5), Changes(), on_depth=hook)


def test_pins_to_the_current_version_and_never_below_it_after_a_switch():
    async def scenario():
        a = admission()
        assert a.switch_to(3)
        assert await a.pin("r1", None, NO_DEADLINE) == 3
        assert await a.pin("r2", 2, NO_DEADLINE) == 3  # a lower minimum changes nothing
        assert a.switch_to(5)
        assert not a.switch_to(4) and not a.switch_to(5)  # versions never go back
        assert a.version == 5
        assert [await a.pin(f"r{i}", None, NO_DEADLINE) for i in range(3)] == [5, 5, 5]

    asyncio.run(scenario())


def test_requests_before_the_first_epoch_wait_for_it():
    async def scenario():
        a = admission()
        waiting = asyncio.ensure_future(a.pin("early", None, NO_DEADLINE))
        await asyncio.sleep(0.05)
        assert not waiting.done() and a.depth(0) == 1
        a.switch_to(7)
        assert await asyncio.wait_for(waiting, 1) == 7
        assert a.depth(0) == 0

    asyncio.run(scenario())


def test_min_policy_version_ahead_holds_until_that_version_is_committed():
    async def scenario():
        a = admission()
        a.switch_to(1)
        waiting = asyncio.ensure_future(a.pin("ahead", 3, NO_DEADLINE))
        await asyncio.sleep(0.02)
        a.switch_to(2)
        await asyncio.sleep(0.02)
        assert not waiting.done(), "v2 is still below the minimum"
        a.switch_to(4)
        assert await asyncio.wait_for(waiting, 1) == 4

    asyncio.run(scenario())


def test_a_hold_ends_with_deadline_exceeded_or_after_the_routers_longest_wait():
    async def scenario():
        a = admission(max_wait=0.2)
        a.switch_to(1)
        with pytest.raises(WaitDeadlineError, match=r"r-deadline.*policy version 9"):
            await a.pin("r-deadline", 9, Deadline.after(0.1))
        with pytest.raises(NoWorkerError, match="r-limit"):
            await a.pin("r-limit", 9, NO_DEADLINE)
        assert a.depth(9) == 0

    asyncio.run(scenario())


def test_a_full_queue_refuses_with_a_retry_hint_and_frees_slots_as_waits_end():
    async def scenario():
        depths = []
        a = admission(max_queue=2, depths=depths)
        a.switch_to(1)
        held = [asyncio.ensure_future(a.pin(f"h{i}", 5, NO_DEADLINE)) for i in range(2)]
        await asyncio.sleep(0.02)
        with pytest.raises(QueueFullError, match=r"h2.*version 5 is full") as refused:
            await a.pin("h2", 5, NO_DEADLINE)
        assert refused.value.retry_after_seconds == 0.5
        assert await a.pin("other", 1, NO_DEADLINE) == 1  # other versions' queues are separate
        unbounded = asyncio.ensure_future(a.pin("admitted", 5, NO_DEADLINE, bounded=False))
        await asyncio.sleep(0.02)
        assert a.depth(5) == 3
        a.switch_to(5)
        assert await asyncio.gather(*held, unbounded) == [5, 5, 5]
        assert a.depth(5) == 0
        assert depths[-1] == (5, 0) and max(d for v, d in depths if v == 5) == 3

    asyncio.run(scenario())


def test_abort_ends_a_hold():
    async def scenario():
        a = admission()
        a.switch_to(1)
        aborted = []
        waiting = asyncio.ensure_future(a.pin("r", 4, NO_DEADLINE, is_aborted=lambda: bool(aborted)))
        await asyncio.sleep(0.02)
        aborted.append(True)
        a.changes.notify()
        with pytest.raises(RequestAbortedError, match="r aborted"):
            await asyncio.wait_for(waiting, 1)

    asyncio.run(scenario())


def test_queue_limits_are_validated():
    with pytest.raises(ValueError):
        QueueLimits(max_queue=-1)
    with pytest.raises(ValueError):
        QueueLimits(max_wait_seconds=0)
