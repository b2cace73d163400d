"""run_load: one load run end to end — the driver, the policy watcher, soak rollouts, progress.

    versions = VersionLog()
    result = asyncio.run(run_load(config, workload, versions))   # then report.write_report(...)

Order: the target must answer GetPolicy first (LoadtestError otherwise, before anything is sent);
then the watcher, the soak driver and the progress display start beside the load driver. Once
sending stops no rollout is started; when the load has drained, one under way is followed to its
end (within its timeout), the watcher polls once more and everything is stopped. The caller owns `versions`,
so that a script may mark events (a worker killed) on the run's timeline from another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from epochserve.client.errors import GenerationError
from epochserve.client.generation import AsyncGenerationClient
from epochserve.errors import EpochserveError
from epochserve.loadtest.config import LoadtestConfig
from epochserve.loadtest.driver import LoadDriver, RunState
from epochserve.loadtest.observe import PolicyWatcher
from epochserve.loadtest.progress import ProgressDisplay
from epochserve.loadtest.records import ObservedRollout, VersionLog
from epochserve.loadtest.soak import RolloutCycler
from epochserve.loadtest.workload import Workload

FIRST_POLL_TIMEOUT_SECONDS = 30.0


class LoadtestError(EpochserveError):
    """The run could not start (the target does not answer)."""


@dataclass
class RunResult:
    """Everything a report is made of. Times are time.monotonic() of this process."""

    config: LoadtestConfig
    workload: str  # its description
    state: RunState
    versions: VersionLog
    rollouts: list[ObservedRollout]
    started_unix: float  # wall clock at the start, for the reader
    ended_at: float = 0.0
    notes: list[str] = field(default_factory=list)


async def run_load(
    config: LoadtestConfig, workload: Workload, versions: VersionLog, *, handle_sigint: bool = False
) -> RunResult:
    """Run the load (and soak rollouts) described by `config`. With `handle_sigint`, a first
    Ctrl-C stops sending and drains (the report is still written), a second one interrupts."""
    state = RunState(time.monotonic())
    result = RunResult(config, workload.describe(), state, versions, [], time.time())
    async with AsyncGenerationClient(config.target, timeout=config.plan.request_timeout_seconds) as client:
        watcher = PolicyWatcher(client, versions, config.policy_poll_seconds)
        try:
            # Not waiting for the channel: a wrong or dead address fails in about a second.
            await client.get_policy(timeout=FIRST_POLL_TIMEOUT_SECONDS, wait_for_ready=False)
        except GenerationError as exc:
            raise LoadtestError(f"the target {config.target} does not answer GetPolicy: {exc}") from None
        await watcher.poll()
        driver = LoadDriver(client, workload, config.plan, state)
        soak = RolloutCycler(config.soak, versions) if config.soak is not None else None
        if soak is not None:
            result.rollouts = soak.rollouts
        stop_side = asyncio.Event()
        side = [asyncio.ensure_future(watcher.run(stop_side))]
        if config.progress:
            display = ProgressDisplay(state, lambda: watcher.latest, lambda: result.rollouts, sys.stderr)
            side.append(asyncio.ensure_future(display.run(stop_side)))
        # No rollout starts once sending stopped: no request could observe it.
        soak_task = asyncio.ensure_future(soak.run(driver.sending_over)) if soak is not None else None
        if soak_task is not None:  # a soak that breaks (a bad source) ends the run: it was its point
            soak_task.add_done_callback(lambda task: _stop_on_failure(task, driver))
        with _sigint_stops(driver.stop, handle_sigint):
            await driver.run()
        if soak_task is not None:
            await _finish_soak(soak_task, config, result)
        await watcher.poll()
        stop_side.set()
        await asyncio.gather(*side)
        if watcher.num_failed_polls:
            result.notes.append(f"{watcher.num_failed_polls} GetPolicy poll(s) of the target failed")
    result.ended_at = time.monotonic()
    return result


def _stop_on_failure(task: asyncio.Future[None], driver: LoadDriver) -> None:
    if not task.cancelled() and task.exception() is not None:
        driver.stop()


async def _finish_soak(task: asyncio.Future[None], config: LoadtestConfig, result: RunResult) -> None:
    """Wait for the soak driver to follow its last rollout to the end (bounded by its timeout)."""
    assert config.soak is not None
    try:
        await asyncio.wait_for(task, config.soak.rollout_timeout_seconds + 30.0)
    except TimeoutError:
        result.notes.append("the last soak rollout did not end in time; it was left running")
    except Exception as exc:  # a soak that broke must not lose the load's report
        result.notes.append(f"soak mode stopped with an error: {exc!r}")


@contextlib.contextmanager
def _sigint_stops(stop: Callable[[], None], enabled: bool) -> Iterator[None]:
    """While inside, the first SIGINT calls `stop` instead of raising KeyboardInterrupt."""
    if not enabled:
        yield
        return
    loop = asyncio.get_running_loop()

    def first_interrupt() -> None:
        print("\nstopping: draining requests in flight (Ctrl-C again to interrupt)", file=sys.stderr)
        loop.remove_signal_handler(signal.SIGINT)
        stop()

    loop.add_signal_handler(signal.SIGINT, first_interrupt)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
