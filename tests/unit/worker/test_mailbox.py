"""The mailbox hands engine-thread outputs to asyncio queues in order, waking the loop once a batch."""

from __future__ import annotations

import asyncio
import threading

from epochserve.worker.serving.mailbox import Mailbox


def test_a_batch_put_from_another_thread_arrives_in_order_with_one_wake_up() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        mailbox = Mailbox(loop)
        first, second = asyncio.Queue(), asyncio.Queue()
        wake_ups = 0
        schedule = loop.call_soon_threadsafe

        def counting(*args):
            nonlocal wake_ups
            wake_ups += 1
            return schedule(*args)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]

        def engine_step(start: int) -> None:
            for i in range(start, start + 100):
                mailbox.put(first if i % 3 else second, i)

        # The loop is blocked in join() while the thread puts: one step's outputs, one wake-up.
        thread = threading.Thread(target=engine_step, args=(0,))
        thread.start()
        thread.join()
        got_first = [await first.get() for _ in range(66)]
        got_second = [await second.get() for _ in range(34)]
        assert got_first == [i for i in range(100) if i % 3]
        assert got_second == [i for i in range(100) if not i % 3]
        assert wake_ups == 1
        # Delivered: the next put wakes the loop again.
        thread = threading.Thread(target=engine_step, args=(100,))
        thread.start()
        thread.join()
        assert [await second.get() for _ in range(33)] == [i for i in range(100, 200) if not i % 3]
        assert wake_ups == 2

    asyncio.run(main())
