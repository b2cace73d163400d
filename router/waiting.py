"""Waiting without hanging: deadlines, the router's own bound on waits, and change notification.

Every wait of a request in the router (for its version to be committed, for a worker serving its
version) ends one of three ways: the condition came true; the caller's deadline ran out
(WaitDeadlineError → DEADLINE_EXCEEDED); or the router's own limit ran out (the caller gives the
error, UNAVAILABLE) — so that a request without a deadline cannot wait forever (docs/design.md §1 I5).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

from epochserve.router.errors import WaitDeadlineError

# Waits end this long before the caller's deadline, so that the router answers DEADLINE_EXCEEDED
# itself, saying what the request waited for, before gRPC cancels the call.
DEADLINE_MARGIN_SECONDS = 0.02


class Changes:
    """Wakes every waiter when something they may be waiting for changed (the committed version,
    the workers, their load). Use from one event loop. Check the condition, then `wait` without
    awaiting in between: a notification cannot then slip through."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Return after the next notify() or after `timeout` seconds, whichever comes first."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


@dataclass(frozen=True, slots=True)
class Deadline:
    """The caller's deadline as a time.monotonic() instant; None when the call has none."""

    expires_at: float | None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        """Seconds left (never negative), None without a deadline."""
        return None if self.expires_at is None else max(0.0, self.expires_at - time.monotonic())

    @property
    def has_passed(self) -> bool:
        """Whether the deadline is (within the margin) over: a cancelled call then timed out."""
        remaining = self.remaining()
        return remaining is not None and remaining <= DEADLINE_MARGIN_SECONDS


class WaitBudget:
    """How long one wait may still last: until the deadline, and at most `max_wait` seconds."""

    def __init__(self, request_id: str, deadline: Deadline, max_wait: float) -> None:
        self.request_id = request_id
        self.deadline = deadline
        self.limit_at = time.monotonic() + max_wait

    def next_timeout(self, what: str, limit_error: Exception) -> float:
        """Seconds to wait before looking again. Raises WaitDeadlineError once the deadline passed
        and `limit_error` once the router's limit did; `what` says what the request waited for."""
        now = time.monotonic()
        expires_at = self.deadline.expires_at
        if expires_at is not None and now >= expires_at - DEADLINE_MARGIN_SECONDS:
            raise WaitDeadlineError(f"request {self.request_id}: deadline exceeded waiting for {what}")
        if now >= self.limit_at:
            raise limit_error
        until = (
            self.limit_at if expires_at is None else min(self.limit_at, expires_at - DEADLINE_MARGIN_SECONDS)
        )
        return until - now
