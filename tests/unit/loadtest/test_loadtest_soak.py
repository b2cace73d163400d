"""Soak rollouts against a scripted Admin API: UNAVAILABLE (a leader being elected, etcd slower than
the coordinator's request timeout) is tried again, a start that landed although its call failed is
adopted, and refusals are still recorded as failed with their reason."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch
from safetensors.torch import save_file

from epochserve.loadtest import soak
from epochserve.loadtest.config import SoakConfig
from epochserve.loadtest.records import VersionLog
from epochserve.proto.v1 import admin_pb2 as pb

pytestmark = pytest.mark.timeout(30)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


class ScriptedAdmin:
    """An AdminClient whose calls first raise the errors scripted for them, then answer from a
    one-cluster model: StartRollout records the rollout (also when its scripted error follows, as
    a coordinator does when etcd wrote the rollout after the coordinator stopped waiting)."""

    def __init__(self, list_errors=(), start_errors=(), start_lands_before_error=False) -> None:
        self.list_errors = list(list_errors)
        self.start_errors = list(start_errors)
        self.start_lands_before_error = start_lands_before_error
        self.rollouts: dict[int, pb.Rollout] = {}
        self.started: list[int] = []  # the version of each StartRollout call

    def __call__(self, *args, **kwargs) -> ScriptedAdmin:  # stands in for the AdminClient class
        return self

    async def __aenter__(self) -> ScriptedAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def list_rollouts(self, limit, timeout) -> pb.ListRolloutsResponse:
        if self.list_errors:
            raise self.list_errors.pop(0)
        return pb.ListRolloutsResponse(committed_epoch=0, rollouts=list(self.rollouts.values()))

    async def start_rollout(self, request: pb.StartRolloutRequest, timeout) -> pb.Rollout:
        self.started.append(request.version)
        if request.version in self.rollouts:
            raise rpc_error(grpc.StatusCode.ALREADY_EXISTS, f"a rollout of v{request.version} already exists")
        if self.start_errors:
            if self.start_lands_before_error:
                self.rollouts[request.version] = pb.Rollout(version=request.version, source=request.source)
            raise self.start_errors.pop(0)
        self.rollouts[request.version] = pb.Rollout(version=request.version, source=request.source)
        return self.rollouts[request.version]

    async def get_rollout(self, version: int, timeout) -> pb.RolloutStatus:
        return pb.RolloutStatus(rollout=self.rollouts[version])

    async def watch_rollout(self, version: int, timeout):
        yield pb.RolloutStatus(rollout=pb.Rollout(version=version, phase=pb.ROLLOUT_PHASE_DONE))


def run_one_rollout(tmp_path, monkeypatch, admin: ScriptedAdmin) -> list:
    source = tmp_path / "src"
    source.mkdir()
    save_file({"w": torch.ones(4)}, str(source / "model.safetensors"))
    monkeypatch.setattr(soak, "AdminClient", admin)
    monkeypatch.setattr(soak, "RETRY_PAUSE_SECONDS", 0.01)
    config = SoakConfig("127.0.0.1:1", "t0k", (source,), 0.01, tmp_path / "pub", rollout_timeout_seconds=10)
    driver = soak.RolloutCycler(config, VersionLog())

    async def run() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(driver.run(stop))
        while not driver.rollouts or driver.rollouts[0].outcome == "running":
            await asyncio.sleep(0.01)
        stop.set()
        await task

    asyncio.run(run())
    return driver.rollouts


def test_unavailable_lists_and_starts_are_tried_again_and_the_rollout_completes(tmp_path, monkeypatch):
    unavailable = rpc_error(grpc.StatusCode.UNAVAILABLE, "this coordinator does not lead")
    admin = ScriptedAdmin(list_errors=[unavailable], start_errors=[unavailable, unavailable])
    rollouts = run_one_rollout(tmp_path, monkeypatch, admin)
    assert [(r.version, r.outcome) for r in rollouts[:1]] == [(1, "done")]
    assert admin.started[:3] == [1, 1, 1]


def test_a_start_that_landed_although_its_call_failed_is_adopted(tmp_path, monkeypatch):
    slow_etcd = rpc_error(grpc.StatusCode.UNAVAILABLE, "etcd txn: Deadline Exceeded")
    admin = ScriptedAdmin(start_errors=[slow_etcd], start_lands_before_error=True)
    rollouts = run_one_rollout(tmp_path, monkeypatch, admin)
    assert (rollouts[0].version, rollouts[0].outcome) == (1, "done")
    assert admin.started[:2] == [1, 1]  # the second attempt found the first one's: ours, by its source


def test_a_refused_start_is_recorded_as_failed_with_its_reason(tmp_path, monkeypatch):
    busy = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "rollout v7 is in flight (STAGING)")
    admin = ScriptedAdmin(start_errors=[busy])
    rollouts = run_one_rollout(tmp_path, monkeypatch, admin)
    assert (rollouts[0].outcome, rollouts[0].reason) == (
        "failed",
        "FAILED_PRECONDITION: rollout v7 is in flight (STAGING)",
    )
