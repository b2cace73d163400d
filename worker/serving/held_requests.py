"""Requests that arrived for a version this worker is about to serve, waiting for the swap.

A router pins a request to the newest committed version it has seen; the worker may still be
finishing the previous version's work (drain) or staging the new weights. Such requests wait here,
each at most `max_wait_seconds`: admitted once the engine can start them, failed with a clear
error when the wait runs out or the version can never be served here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from epochserve.errors import EpochserveError, RequestAbortedError, VersionMismatchError
from epochserve.proto.convert import ParsedGenerateRequest
from epochserve.worker.engine.engine import Engine, StartDecision


@dataclass(slots=True)
class _Held:
    request: ParsedGenerateRequest
    on_error: Callable[[BaseException], None]
    deadline: float


class HeldRequests:
    def __init__(self, max_wait_seconds: float = 30.0) -> None:
        self.max_wait_seconds = max_wait_seconds
        self._held: dict[str, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, request: ParsedGenerateRequest, on_error: Callable[[BaseException], None]) -> None:
        self._held[request.request_id] = _Held(request, on_error, time.monotonic() + self.max_wait_seconds)

    def release(self, engine: Engine) -> list[str]:
        """Start every held request the engine can start now; fail the expired. Returns the ids started."""
        started = []
        now = time.monotonic()
        for request_id, held in list(self._held.items()):
            try:
                admission = engine.start_decision(held.request)
                if admission is StartDecision.START:
                    engine.add_request(held.request)
                    started.append(request_id)
                elif now > held.deadline:
                    raise VersionMismatchError(
                        f"waited {self.max_wait_seconds:.0f} s for policy version "
                        f"{held.request.policy_version}; this worker serves {engine.policy_version}"
                    )
                else:
                    continue
            except EpochserveError as exc:
                held.on_error(exc)
            del self._held[request_id]
        return started

    def abort(self, request_id: str, reason: str) -> bool:
        held = self._held.pop(request_id, None)
        if held is not None:
            held.on_error(RequestAbortedError(f"request {request_id} aborted before it started: {reason}"))
        return held is not None
