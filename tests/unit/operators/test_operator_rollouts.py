"""PolicyRollout logic against an in-memory Admin API that follows the coordinator's contract."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from fixtures.policy_rollouts import RecordingSink, policy_rollout
from memory_admin_testkit import InMemoryAdmin

from epochserve.controlplane.store.records import DrainPolicy, RolloutPhase
from epochserve.errors import RolloutBusyError
from epochserve.operators.rollouts.admin import AdminUnavailableError
from epochserve.operators.rollouts.driver import FinalizeOutcome, drive_rollout, finalize_rollout
from epochserve.operators.rollouts.request import RolloutRequest, parse_rollout
from epochserve.operators.spec import SpecError


def _run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def _clock() -> Callable[[], str]:
    ticks = iter(range(1000))
    return lambda: f"2026-11-22T00:00:{next(ticks):02d}Z"


async def _until_staging(
    admin: InMemoryAdmin, sink: RecordingSink, request: RolloutRequest | None = None
) -> asyncio.Task[str]:
    """Start driving a fresh PolicyRollout in the background; return once its status shows Staging."""
    task = asyncio.create_task(drive_rollout(admin, request or policy_rollout(), sink, {}, _clock()))
    await sink.wait_for(lambda s: s.get("phase") == "Staging")
    return task


def test_phases_mirror_the_rollout_with_per_worker_progress():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(("w-0", "w-1")), RecordingSink()
        task = await _until_staging(admin, sink, policy_rollout(generation=3))
        await admin.report_staged(2, "w-0")
        await sink.wait_for(lambda s: s["workers"][0].get("stagedVersion") == 2)
        assert sink.current["workers"] == [
            {"id": "w-0", "state": "Staged", "stagedVersion": 2, "servingVersion": 1},
            {"id": "w-1", "state": "Staging", "servingVersion": 1},
        ]
        await admin.report_staged(2, "w-1")
        await admin.commit(2)
        await sink.wait_for(lambda s: s.get("phase") == "Committed")
        await admin.finish(2)
        assert await task == "Done"
        assert sink.phases == ["Pending", "Staging", "Committed", "Done"]
        assert [w["servingVersion"] for w in sink.current["workers"]] == [2, 2]
        conditions = {c["type"]: c for c in sink.current["conditions"]}
        assert {t: c["status"] for t, c in conditions.items()} == {
            "Accepted": "True",
            "Committed": "True",
            "Complete": "True",
        }
        assert all(c["observedGeneration"] == 3 for c in conditions.values())
        assert sink.current["observedGeneration"] == 3
        assert admin.start_calls == [2]
        assert admin.rollouts[2].drain == "abort"

    _run(scenario)


def test_delete_before_commit_aborts_the_rollout():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(), RecordingSink()
        task = await _until_staging(admin, sink)
        await admin.report_staged(2, "w-0")
        assert await finalize_rollout(admin, policy_rollout(), sink.current) is FinalizeOutcome.ABORTED
        assert admin.abort_calls == [2]
        assert admin.rollouts[2].phase is RolloutPhase.ABORTED
        assert admin.epoch == 1
        assert await task == "Aborted"
        assert sink.current["phase"] == "Aborted"
        committed = next(c for c in sink.current["conditions"] if c["type"] == "Committed")
        assert (committed["status"], committed["reason"]) == ("False", "Aborted")

    _run(scenario)


@pytest.mark.parametrize("finished", [False, True], ids=["committed", "done"])
def test_delete_after_commit_keeps_the_rollout(finished):
    async def scenario() -> None:
        admin = InMemoryAdmin()
        await admin.start_rollout(2, "/models/v2", "finish")
        await admin.commit(2)
        if finished:
            await admin.finish(2)
        assert (
            await finalize_rollout(admin, policy_rollout(), {"phase": "Committed"})
            is FinalizeOutcome.KEPT_COMMITTED
        )
        assert admin.abort_calls == []
        assert admin.rollouts[2].phase.is_committed
        assert admin.epoch == 2

    _run(scenario)


def test_abort_that_loses_the_race_with_commit_keeps_the_rollout():
    async def scenario() -> None:
        admin = InMemoryAdmin()
        await admin.start_rollout(2, "/models/v2", "finish")
        real_abort = admin.abort_rollout

        async def commit_then_abort(version: int):
            await admin.commit(version)  # the coordinator commits between our Get and Abort
            return await real_abort(version)

        admin.abort_rollout = commit_then_abort  # type: ignore[method-assign]
        assert (
            await finalize_rollout(admin, policy_rollout(), {"phase": "Staging"})
            is FinalizeOutcome.KEPT_COMMITTED
        )
        assert admin.rollouts[2].phase is RolloutPhase.COMMITTED

    _run(scenario)


def test_delete_while_the_start_is_in_flight_aborts_it_on_the_second_look():
    async def scenario() -> None:
        admin = InMemoryAdmin()
        real_get = admin.get_rollout

        async def start_lands_after_the_first_look(version: int):
            try:
                return await real_get(version)
            finally:  # the daemon's StartRollout, cancelled by the delete, still reaches the server
                if version not in admin.rollouts:
                    await admin.start_rollout(version, "/models/v2", "abort")

        admin.get_rollout = start_lands_after_the_first_look  # type: ignore[method-assign]
        outcome = await finalize_rollout(admin, policy_rollout(), {"phase": "Pending"}, recheck_delay_s=0.01)
        assert outcome is FinalizeOutcome.ABORTED
        assert admin.abort_calls == [2] and admin.rollouts[2].phase is RolloutPhase.ABORTED

    _run(scenario)


def test_delete_of_a_never_started_or_foreign_rollout_touches_nothing():
    async def scenario() -> None:
        admin = InMemoryAdmin()
        assert (
            await finalize_rollout(admin, policy_rollout(), {}, recheck_delay_s=0) is FinalizeOutcome.NOTHING
        )
        await admin.start_rollout(2, "nccl", "finish")
        assert (
            await finalize_rollout(admin, policy_rollout(source="/models/v2"), {}) is FinalizeOutcome.NOTHING
        )
        assert (
            await finalize_rollout(admin, policy_rollout(source="nccl"), {"phase": "Rejected"})
            is FinalizeOutcome.NOTHING
        )
        assert admin.abort_calls == []
        assert admin.rollouts[2].phase is RolloutPhase.STAGING

    _run(scenario)


def test_operator_restart_adopts_the_running_rollout_without_starting_it_again():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(), RecordingSink()
        await admin.start_rollout(2, "/models/v2", "abort")
        await admin.commit(2)
        task = asyncio.create_task(
            drive_rollout(admin, policy_rollout(), sink, {"phase": "Staging"}, _clock())
        )
        await sink.wait_for(lambda s: s.get("phase") == "Committed")
        await admin.finish(2)
        assert await task == "Done"
        assert admin.start_calls == [2]
        assert "Pending" not in sink.phases

    _run(scenario)


def test_final_status_returns_without_calling_the_admin_api():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(), RecordingSink()
        assert await drive_rollout(admin, policy_rollout(), sink, {"phase": "Done"}) == "Done"
        assert admin.start_calls == [] and sink.writes == []

    _run(scenario)


def test_version_not_above_the_epoch_is_rejected_for_good():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(epoch=5), RecordingSink()
        assert await drive_rollout(admin, policy_rollout(version=3), sink, {}, _clock()) == "Rejected"
        assert sink.current["phase"] == "Rejected"
        assert "not above the epoch 5" in sink.current["message"]
        accepted = next(c for c in sink.current["conditions"] if c["type"] == "Accepted")
        assert (accepted["status"], accepted["reason"]) == ("False", "Rejected")
        assert admin.rollouts == {}

    _run(scenario)


def test_same_version_from_another_source_is_rejected_not_adopted():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(), RecordingSink()
        await admin.start_rollout(2, "nccl", "finish")
        assert (
            await drive_rollout(admin, policy_rollout(source="/models/v2"), sink, {}, _clock()) == "Rejected"
        )
        assert "already rolled out from 'nccl'" in sink.current["message"]
        assert admin.start_calls == [2]

    _run(scenario)


def test_busy_admin_leaves_the_rollout_pending_and_raises_for_retry():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(), RecordingSink()
        await admin.start_rollout(2, "/models/v2", "finish")
        with pytest.raises(RolloutBusyError):
            await drive_rollout(admin, policy_rollout(version=3, source="/models/v3"), sink, {}, _clock())
        assert sink.current["phase"] == "Pending"
        assert sink.current["message"].startswith("waiting: another rollout is in flight")
        assert 3 not in admin.rollouts

    _run(scenario)


def test_broken_watch_raises_and_the_retry_resumes_the_mirror():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(), RecordingSink()
        task = await _until_staging(admin, sink)
        await admin.break_streams()
        with pytest.raises(AdminUnavailableError):
            await task
        admin.stream_broken = False
        await admin.commit(2)
        await admin.finish(2)
        assert await drive_rollout(admin, policy_rollout(), sink, sink.current, _clock()) == "Done"
        assert admin.start_calls == [2]

    _run(scenario)


def test_unchanged_status_is_not_written_twice():
    async def scenario() -> None:
        admin, sink = InMemoryAdmin(), RecordingSink()
        task = await _until_staging(admin, sink)
        writes = len(sink.writes)
        await admin.fail(2, "checksum mismatch on w-1")
        assert await task == "Aborted"
        # One write for the abort; the watch's first (unchanged) snapshot wrote nothing.
        assert len(sink.writes) == writes + 1
        assert sink.current["message"] == "checksum mismatch on w-1"

    _run(scenario)


def test_parse_rollout_refuses_bad_specs():
    with pytest.raises(SpecError, match="missing field 'version'"):
        parse_rollout(
            {
                "metadata": {"name": "r", "namespace": "n"},
                "spec": {"clusterRef": {"name": "c"}, "source": "s"},
            }
        )
    with pytest.raises(SpecError, match="bad drain 'later'"):
        parse_rollout(
            {
                "metadata": {"name": "r", "namespace": "n"},
                "spec": {"clusterRef": {"name": "c"}, "version": 2, "source": "s", "drain": "later"},
            }
        )


def test_an_overlap_rollout_carries_its_drain_deadline_to_the_admin_api():
    body = {
        "metadata": {"name": "r", "namespace": "n"},
        "spec": {"clusterRef": {"name": "c"}, "version": 2, "source": "s", "drain": "overlap"},
    }
    body["spec"]["drainDeadlineSeconds"] = 45
    request = parse_rollout(body)
    assert (request.drain, request.drain_deadline) == (DrainPolicy.OVERLAP, 45.0)
    body["spec"]["drainDeadlineSeconds"] = -1
    with pytest.raises(SpecError, match="drainDeadlineSeconds -1"):
        parse_rollout(body)

    async def scenario() -> None:
        admin, sink = InMemoryAdmin(), RecordingSink()
        task = await _until_staging(admin, sink, request)
        task.cancel()
        assert admin.drain_deadlines == {2: 45.0}
        assert admin.rollouts[2].drain is DrainPolicy.OVERLAP

    _run(scenario)
