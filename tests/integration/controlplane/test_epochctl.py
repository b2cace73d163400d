"""`epochctl` end to end: a real coordinator process, fake workers and a router in this process,
every command run as its own process; exit codes, JSON and text checked."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import dataclass

from fakes import FakeRouter, FakeWorker
from harness import EPOCHCTL, TOKEN, CoordinatorProcess, run, wait_for_rollout


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.out.splitlines() if line.strip()]


async def epochctl(address: str, *args: str, token: str | None = TOKEN, timeout: float = 30) -> Result:
    env = {k: v for k, v in os.environ.items() if k != "EPOCHSERVE_ADMIN_TOKEN"}
    if token is not None:
        env["EPOCHSERVE_ADMIN_TOKEN"] = token
    command, *rest = args
    verb = [command, *rest[:1]] if command == "rollout" else [command]
    flags = rest[1:] if command == "rollout" else rest
    process = await asyncio.create_subprocess_exec(
        *EPOCHCTL, *verb, f"--admin={address}", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return Result(process.returncode or 0, out.decode(), err.decode())


async def run_commands(etcd, coordinator: CoordinatorProcess, bad_token) -> dict[str, Result]:
    """Every command once (some twice), against two workers and a router; results by name."""
    await coordinator.wait_serving()
    results: dict[str, Result] = {}

    async def cli(name: str, *args: str, **kwargs) -> None:
        results[name] = await epochctl(coordinator.address, *args, **kwargs)

    async with contextlib.AsyncExitStack() as stack:
        good = await stack.enter_async_context(FakeWorker(etcd, "w0"))
        other = await stack.enter_async_context(FakeWorker(etcd, "w1"))
        await stack.enter_async_context(FakeRouter(etcd, "r0"))
        await cli("workers json", "workers", "--json")
        await cli("workers text", "workers")
        start = ("--source=/ckpt/v1", "--drain=finish", "--json")
        await cli("start wait", "rollout", "start", "--version=1", *start, "--wait")
        await cli("status json", "rollout", "status", "1", "--json")
        await cli("status text", "rollout", "status", "1")
        await cli("watch done", "rollout", "status", "1", "--watch", "--json")
        await cli("abort committed", "rollout", "abort", "1")
        other.stage_gate.clear()
        await cli("start held", "rollout", "start", "--version=2", "--source=nccl", "--drain=abort")
        await cli("abort staging", "rollout", "abort", "2", "--reason=bad batch", "--json")
        await cli("start again", "rollout", "start", "--version=2", "--source=nccl", "--drain=abort")
        await cli("start times out", "rollout", "start", "--version=3", *start, "--wait", "--timeout=1")
        await cli("status staging", "rollout", "status", "3")
        other.stage_gate.set()
        await wait_for_rollout(etcd, 3, "DONE")
        good.checksum = "sum-corrupt"
        await cli("start aborted", "rollout", "start", "--version=4", *start, "--wait")
        await cli(
            "start aborted text",
            "rollout",
            "start",
            "--version=5",
            "--source=/ckpt/v5",
            "--drain=finish",
            "--wait",
        )
        await cli("list json", "rollout", "list", "--json")
        await cli("list text", "rollout", "list", "--limit=2")
        await cli("wrong token", "workers", "--token-file", str(bad_token))
        await cli("no token", "workers", token=None)
    return results


def test_epochctl_commands_against_a_running_coordinator(etcd, tmp_path):
    coordinator = CoordinatorProcess(etcd, "coord-cli", tmp_path)
    bad_token = tmp_path / "bad-token"
    bad_token.write_text("not-the-right-token-at-all\n")
    try:
        results = run(run_commands(etcd, coordinator, bad_token), timeout=120)
    finally:
        coordinator.stop()
    check_listings(results)
    check_rollout_lifecycle(results)
    check_refusals(results)


def check_listings(r: dict[str, Result]) -> None:
    workers = r["workers json"].json_lines()[0]
    assert r["workers json"].code == 0 and workers["leader_id"] == "coord-cli"
    assert [w["worker_id"] for w in workers["workers"]] == ["w0", "w1"]
    assert [x["router_id"] for x in workers["routers"]] == ["r0"]
    assert r["workers text"].code == 0 and "leading coordinator: coord-cli" in r["workers text"].out
    assert "w0" in r["workers text"].out and "w1" in r["workers text"].out
    listing = r["list json"].json_lines()[0]
    assert [(x["version"], x["phase"]) for x in listing["rollouts"]] == [
        (5, "aborted"), (4, "aborted"), (3, "done"), (2, "aborted"), (1, "done"),
    ]  # fmt: skip
    assert listing["committed_epoch"] == 3
    assert [w["status"] for w in workers["workers"]] == ["ready", "ready"]  # as the table says
    text = r["list text"].out
    assert "committed epoch v3" in text
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["v5", "v4"]  # --limit=2, newest first


def check_rollout_lifecycle(r: dict[str, Result]) -> None:
    lines = r["start wait"].json_lines()  # the started rollout, then each status until DONE
    assert r["start wait"].code == 0
    assert lines[0]["phase"] == "staging" and lines[-1]["rollout"]["phase"] == "done"
    status = r["status json"].json_lines()[0]
    assert (status["num_serving"], status["num_acked"], status["committed_epoch"]) == (2, 1, 1)
    assert (
        r["status text"].code == 0 and "v1 DONE" in r["status text"].out and "serving" in r["status text"].out
    )
    assert r["watch done"].code == 0 and len(r["watch done"].json_lines()) == 1
    assert r["start held"].code == 0 and "started v2 STAGING" in r["start held"].out
    aborted = r["abort staging"].json_lines()[0]
    assert r["abort staging"].code == 0
    assert (aborted["phase"], aborted["reason"]) == ("aborted", "bad batch")
    assert r["status staging"].code == 0 and "v3 STAGING" in r["status staging"].out
    assert r["start aborted"].code == 1
    assert r["start aborted"].json_lines()[-1]["rollout"]["phase"] == "aborted"
    # In text, --wait prints each change of progress once and ends with why it aborted.
    text = r["start aborted text"]
    progress = text.out.splitlines()[1:]
    assert text.code == 1 and len(progress) == len(set(progress)) >= 1
    reason = r["list json"].json_lines()[0]["rollouts"][0]["reason"]
    assert reason and progress[-1].startswith("v5 ABORTED") and reason in progress[-1]


def check_refusals(r: dict[str, Result]) -> None:
    assert r["abort committed"].code == 1 and "FAILED_PRECONDITION" in r["abort committed"].err
    assert r["start again"].code == 1 and "ALREADY_EXISTS" in r["start again"].err
    assert r["start times out"].code == 3 and "DEADLINE_EXCEEDED" in r["start times out"].err
    assert r["wrong token"].code == 1 and "UNAUTHENTICATED" in r["wrong token"].err
    assert r["no token"].code == 2 and "EPOCHSERVE_ADMIN_TOKEN" in r["no token"].err
