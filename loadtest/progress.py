"""Live progress of a load run on stderr: one line redrawn in place on a terminal, or a plain line
every `plain_interval` seconds when stderr is a file or a pipe (logs stay readable)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from epochserve.client.generation import PolicyInfo
from epochserve.loadtest.driver import RunState
from epochserve.loadtest.records import ObservedRollout

TTY_INTERVAL_SECONDS = 0.5


class ProgressDisplay:
    def __init__(
        self,
        state: RunState,
        policy: Callable[[], PolicyInfo | None],
        rollouts: Callable[[], Sequence[ObservedRollout]],
        stream: TextIO,
        plain_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.policy = policy
        self.rollouts = rollouts
        self.stream = stream
        self.is_tty = stream.isatty()
        self.interval = TTY_INTERVAL_SECONDS if self.is_tty else plain_interval
        self.clock = clock
        self._last = (state.origin, 0, 0)  # (time, completed, streamed tokens) at the last line

    def line(self) -> str:
        """The current line: counts, rates since the previous line, version, rollouts."""
        state, now = self.state, self.clock()
        then, completed, tokens = self._last
        span = max(now - then, 1e-9)
        self._last = (now, state.num_completed, state.num_streamed_tokens)
        policy = self.policy()
        version = (
            "v?"
            if policy is None
            else f"v{policy.policy_version}" + (" DONE" if policy.rollout_done else " rolling")
        )
        rollouts = self.rollouts()
        done = sum(r.outcome == "done" for r in rollouts)
        other = sum(r.outcome not in ("done", "running") for r in rollouts)
        return (
            f"[{now - state.origin:7.1f}s] sent {state.num_sent}  ok {state.num_completed}  "
            f"err {state.num_errors}  open {state.num_in_flight}  | "
            f"{(state.num_completed - completed) / span:.1f} req/s  "
            f"{(state.num_streamed_tokens - tokens) / span:.0f} tok/s  | {version}"
            + (f"  | rollouts {done} done, {other} not" if rollouts else "")
        )

    def show(self) -> None:
        if self.is_tty:
            self.stream.write("\r\x1b[K" + self.line())
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Show a line every interval until `stop`; then a last one, ended by a newline."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                self.show()
        self.show()
        if self.is_tty:
            self.stream.write("\n")
            self.stream.flush()
