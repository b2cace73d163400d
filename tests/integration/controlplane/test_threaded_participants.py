"""The participant API as a threaded worker engine and router use it (participants/threaded.py):
blocking calls from plain threads, a real coordinator process, a real etcd."""

from __future__ import annotations

import threading

from harness import TOKEN, CoordinatorProcess, run, start_request, wait_for_rollout

from epochserve.controlplane.admin.client import AdminClient
from epochserve.controlplane.participants.directives import Commit, Directive, Stage
from epochserve.controlplane.participants.threaded import SyncRouterParticipant, SyncWorkerParticipant
from epochserve.controlplane.participants.worker import WorkerIdentity
from epochserve.controlplane.store.records import DrainPolicy


def engine_loop(participant: SyncWorkerParticipant, seen: list[Directive], stop: threading.Event) -> None:
    """What a worker's engine thread does between steps: look for a directive, carry it out."""
    while not stop.is_set():
        directive = participant.next_directive(timeout=0.1)
        if directive is None:
            continue  # run an engine step here
        seen.append(directive)
        if isinstance(directive, Stage):
            participant.report_staged(directive.version, "sum-threaded")
        elif isinstance(directive, Commit):
            participant.report_serving(directive.version, f"fp-{directive.version}")


def test_threaded_workers_and_router_take_part_in_a_rollout(etcd, tmp_path):
    coordinator = CoordinatorProcess(etcd, "coord-sync", tmp_path)
    workers = [
        SyncWorkerParticipant(
            etcd.config, etcd.cluster, WorkerIdentity(f"w{i}", f"127.0.0.1:{7100 + i}"), lease_ttl=2
        )
        for i in range(2)
    ]
    router = SyncRouterParticipant(etcd.config, etcd.cluster, "r0", "127.0.0.1:7000", lease_ttl=2)
    stop = threading.Event()
    seen: list[list[Directive]] = [[], []]
    acked: list[int] = []
    threads = [
        threading.Thread(target=engine_loop, args=(w, s, stop)) for w, s in zip(workers, seen, strict=True)
    ]

    def router_loop() -> None:
        epoch = router.wait_for_epoch(above=0, timeout=20)
        router.ack_epoch(epoch)
        router.flush()
        acked.append(epoch)

    threads.append(threading.Thread(target=router_loop))
    try:
        run(coordinator.wait_serving())
        for participant in [*workers, router]:
            participant.start(timeout=10)
        ready_before = [w.can_accept_work for w in workers]
        for thread in threads:
            thread.start()

        async def start_and_finish():
            async with AdminClient(coordinator.address, TOKEN) as admin:
                await admin.start_rollout(start_request(1), timeout=10)
            return await wait_for_rollout(etcd, 1, "DONE")

        record = run(start_and_finish())
        view = router.view()
        serving = [(w.serving_version, w.can_accept_work) for w in workers]
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for participant in [*workers, router]:
            participant.close()
        coordinator.stop()
    assert ready_before == [True, True]
    assert record.manifest_checksum == "sum-threaded"
    for directives in seen:
        assert directives == [
            Stage(1, "/ckpt/v1", DrainPolicy.FINISH, None, catch_up=False),
            Commit(1, DrainPolicy.FINISH),
        ]
    assert serving == [(1, True), (1, True)]
    assert acked == [1] and view.committed_epoch == 1
    assert [w.worker_id for w in view.serving(1)] == ["w0", "w1"]
