"""Dispatcher + WorkerRegistry: candidates per version, waiting in the version's queue, moving
requests up when their version is retired, exclusions, suspects, per-worker bounds and load."""

import asyncio
import contextlib
import time

import grpc
import pytest

from epochserve.controlplane.participants.router import ClusterView, WorkerView
from epochserve.errors import RequestAbortedError
from epochserve.router.admission import QueueLimits
from epochserve.router.attempt import FlowState
from epochserve.router.core import RouterCore
from epochserve.router.errors import NoWorkerError, QueueFullError
from epochserve.router.policies import RouteRequest, make_policy
from epochserve.router.waiting import Deadline

ROUTE = RouteRequest("r", (1, 2, 3), "", 2, 40)


def worker(name, version, ready=True, port=1):
    return WorkerView(name, f"127.0.0.1:{port}", 1, 8, version, ready)


def view(revision, epoch, *workers):
    return ClusterView(revision, epoch, tuple(workers))


@contextlib.asynccontextmanager
async def core(policy="round-robin", max_queue=8, max_wait=2.0, max_seqs_per_worker=0):
    # Channels to a closed port: the registry dials lazily, nothing here sends a request.
    built = RouterCore.build(
        "router-t",
        make_policy(policy),
        QueueLimits(max_queue, max_wait, 0.25),
        lambda address: grpc.aio.insecure_channel("127.0.0.1:9"),
        max_seqs_per_worker=max_seqs_per_worker,
    )
    try:
        yield built
    finally:
        await built.registry.close()


def state(version, request_id="r", n=2, attempts=0):
    s = FlowState(request_id, n, version=version)
    s.num_attempts = attempts
    return s


def run(coro):
    return asyncio.run(coro)


def test_only_ready_workers_of_the_pinned_version_are_candidates_and_load_is_reserved():
    async def scenario():
        async with core() as c:
            c.switch_to(1)
            c.registry.update(view(5, 1, worker("a", 0), worker("b", 1), worker("c", 1, ready=False)))
            handle, reservation = await c.dispatcher.acquire(ROUTE, state(1), Deadline(None))
            assert handle.worker_id == "b"
            assert (handle.load.tokens, handle.load.seqs, handle.load.requests) == (40, 2, 1)
            reservation.consume_tokens(15)
            reservation.finish_sequence()
            assert (handle.load.tokens, handle.load.seqs) == (25, 1)
            reservation.release()
            reservation.release()  # idempotent
            assert (handle.load.tokens, handle.load.seqs, handle.load.requests) == (0, 0, 0)

    run(scenario())


def test_a_request_waits_in_its_versions_queue_until_a_worker_serves_it():
    async def scenario():
        async with core() as c:
            c.switch_to(2)
            c.registry.update(view(1, 2, worker("a", 1)))  # still draining v1
            waiting = asyncio.ensure_future(c.dispatcher.acquire(ROUTE, state(2), Deadline(None)))
            await asyncio.sleep(0.05)
            assert not waiting.done() and c.admission.depth(2) == 1
            c.registry.update(view(2, 2, worker("a", 2)))
            handle, _ = await asyncio.wait_for(waiting, 1)
            assert handle.worker_id == "a" and c.admission.depth(2) == 0

    run(scenario())


def test_queue_full_and_no_worker_within_the_longest_wait():
    async def scenario():
        async with core(max_queue=1, max_wait=0.2) as c:
            c.switch_to(1)
            first = asyncio.ensure_future(c.dispatcher.acquire(ROUTE, state(1, "q1"), Deadline(None)))
            await asyncio.sleep(0.02)
            with pytest.raises(QueueFullError, match="q2"):
                await c.dispatcher.acquire(ROUTE, state(1, "q2"), Deadline(None))
            with pytest.raises(NoWorkerError, match=r"q1.*serving policy version 1"):
                await first

    run(scenario())


def test_a_request_whose_version_no_worker_serves_any_more_moves_up_flagged_only_if_it_ran():
    async def scenario():
        async with core() as c:
            c.switch_to(3)
            c.registry.update(view(1, 3, worker("a", 3), worker("b", 3)))
            fresh, retried = state(2), state(2, attempts=1)
            await c.dispatcher.acquire(ROUTE, fresh, Deadline(None))
            await c.dispatcher.acquire(ROUTE, retried, Deadline(None))
            assert (fresh.version, fresh.is_rerun) == (3, False)
            assert (retried.version, retried.is_rerun) == (3, True)
            c.registry.update(view(2, 3, worker("a", 2), worker("b", 3)))  # a drain=finish: v2 lives on
            kept = state(2, attempts=1)
            handle, _ = await c.dispatcher.acquire(ROUTE, kept, Deadline(None))
            assert (kept.version, kept.is_rerun, handle.worker_id) == (2, False, "a")

    run(scenario())


def test_excluded_workers_are_skipped_and_suspects_used_only_as_a_last_resort():
    async def scenario():
        async with core() as c:
            c.switch_to(1)
            c.registry.update(view(1, 1, worker("a", 1), worker("b", 1)))
            a, b = c.registry.handles
            s = state(1)
            s.excluded.add(a.key)
            for _ in range(3):
                assert (await c.dispatcher.acquire(ROUTE, s, Deadline(None)))[0] is b
            c.registry.mark_suspect(b)
            picks = {(await c.dispatcher.acquire(ROUTE, state(1), Deadline(None)))[0] for _ in range(4)}
            assert picks == {a}
            c.registry.mark_suspect(a)
            picks = {(await c.dispatcher.acquire(ROUTE, state(1), Deadline(None)))[0] for _ in range(4)}
            assert picks == {a, b}  # all suspect: better than nothing

    run(scenario())


def test_a_lone_worker_that_failed_is_tried_again_once_no_longer_suspect():
    async def scenario():
        async with core() as c:
            c.registry.suspect_seconds = 0.3
            c.switch_to(1)
            c.registry.update(view(1, 1, worker("only", 1)))
            [only] = c.registry.handles
            s = state(1, attempts=1)
            s.excluded.add(only.key)  # the request failed on it ...
            c.registry.mark_suspect(only)  # ... in transport
            started = time.monotonic()
            handle, _ = await asyncio.wait_for(c.dispatcher.acquire(ROUTE, s, Deadline(None)), 2)
            assert handle is only and time.monotonic() - started >= 0.25

    run(scenario())


def test_a_per_worker_bound_queues_requests_until_a_sequence_ends():
    async def scenario():
        async with core(max_seqs_per_worker=2) as c:
            c.switch_to(1)
            c.registry.update(view(1, 1, worker("a", 1)))
            _, held = await c.dispatcher.acquire(ROUTE, state(1), Deadline(None))  # n=2 fills it
            waiting = asyncio.ensure_future(c.dispatcher.acquire(ROUTE, state(1, "w"), Deadline(None)))
            await asyncio.sleep(0.05)
            assert not waiting.done() and c.admission.depth(1) == 1
            held.release()
            await asyncio.wait_for(waiting, 1)

    run(scenario())


def test_the_per_worker_bound_counts_each_version_apart():
    """During a drain=overlap the worker serves v2 while v1's sequences still run there, each with
    slots of its own: v1's held sequences do not keep a v2 request waiting."""

    async def scenario():
        async with core(max_seqs_per_worker=2) as c:
            c.switch_to(1)
            c.registry.update(view(1, 1, worker("a", 1)))
            handle, old = await c.dispatcher.acquire(ROUTE, state(1), Deadline(None))  # fills v1's 2
            c.switch_to(2)
            c.registry.update(view(2, 2, worker("a", 2)))  # committed: serving v2, retiring v1
            _, new = await asyncio.wait_for(c.dispatcher.acquire(ROUTE, state(2, "v2"), Deadline(None)), 1)
            assert handle.load.seqs == 4 and handle.load.seqs_by_version == {1: 2, 2: 2}
            waiting = asyncio.ensure_future(c.dispatcher.acquire(ROUTE, state(2, "w"), Deadline(None)))
            await asyncio.sleep(0.05)
            assert not waiting.done()  # v2's own slots are full
            old.release()
            await asyncio.sleep(0.05)
            assert not waiting.done()  # v1's ending frees v1's slots only
            new.release()
            await asyncio.wait_for(waiting, 1)
            assert handle.load.seqs_by_version == {2: 2}

    run(scenario())


def test_abort_while_waiting_for_a_worker():
    async def scenario():
        async with core() as c:
            c.switch_to(1)
            s = state(1, "gone")
            waiting = asyncio.ensure_future(c.dispatcher.acquire(ROUTE, s, Deadline(None)))
            await asyncio.sleep(0.02)
            s.is_abort_requested = True
            c.admission.changes.notify()
            with pytest.raises(RequestAbortedError, match="gone"):
                await asyncio.wait_for(waiting, 1)
            assert c.admission.depth(1) == 0

    run(scenario())


def test_a_worker_that_left_gets_nothing_new_and_one_back_elsewhere_is_a_new_handle():
    async def scenario():
        async with core() as c:
            c.switch_to(1)
            c.registry.update(view(1, 1, worker("a", 1, port=1)))
            old, reservation = await c.dispatcher.acquire(ROUTE, state(1), Deadline(None))
            c.registry.update(view(2, 1, worker("a", 1, port=2)))  # restarted on another port
            new, _ = await c.dispatcher.acquire(ROUTE, state(1), Deadline(None))
            assert new is not old and old.is_removed and new.key.endswith(":2")
            reservation.release()  # the old one's last request ended: its channel closes

    run(scenario())


def test_moving_up_forgets_the_workers_that_failed_the_old_version():
    async def scenario():
        async with core() as c:
            c.switch_to(2)
            c.registry.update(view(1, 2, worker("only", 2)))  # the one worker swapped to v2
            [only] = c.registry.handles
            s = state(1, attempts=1)
            s.excluded.add(only.key)  # it retired the request under v1
            handle, _ = await asyncio.wait_for(c.dispatcher.acquire(ROUTE, s, Deadline(None)), 1)
            assert handle is only and (s.version, s.is_rerun, s.excluded) == (2, True, set())

    run(scenario())
