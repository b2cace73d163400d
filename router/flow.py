"""RequestFlow: everything the router does for one Generate call (docs/design.md §4 steps 1-3, 7-8).

    validate → pin (admission) → dispatch (policy) → attempt on a worker → forward
                                    ↑                          │ nothing sent yet and the worker
                                    └── retry / rerun (retry.py) ◄┘ was lost or the version retired

Every message forwarded carries the pinned version (checked: a message of another version is a
runtime guard, INTERNAL). The flow records the request's metrics however it ends, and writes the
audit line of a completed response.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from epochserve.errors import InvalidRequestError, RequestAbortedError
from epochserve.proto.results import MixedVersionError, ResponseAssembler, tokens_of
from epochserve.proto.status import status_of
from epochserve.proto.v1 import common_pb2
from epochserve.router.attempt import Attempt, FlowState, Send
from epochserve.router.audit import audit_record
from epochserve.router.core import RouterCore
from epochserve.router.retry import Action, AttemptReport, Outcome, decide
from epochserve.router.validation import validate_request
from epochserve.router.waiting import Deadline


class RequestFlow:
    """One Generate call. `run()` it once: it writes the response through `write` (the server's
    context.write) and raises the error the call ends with."""

    def __init__(
        self, core: RouterCore, request: common_pb2.GenerateRequest, deadline: Deadline, write: Send
    ) -> None:
        self.core = core
        self.deadline = deadline
        self.write = write
        self.request = common_pb2.GenerateRequest()
        self.request.CopyFrom(request)
        if not self.request.request_id:
            self.request.request_id = uuid.uuid4().hex
        n = request.n if request.HasField("n") else 1
        self.state = FlowState(self.request.request_id, n)
        self.assembler = ResponseAssembler() if core.audit is not None else None
        # The audit log always holds support sizes (verify rebuilds each token's exact support);
        # a client that did not ask for them does not get them.
        self._strip_support_sizes = self.assembler is not None and not request.sampling.return_support_size
        if self.assembler is not None:
            self.request.sampling.return_support_size = True
        self.num_tokens = 0
        self._last_chunk_at: dict[int, float] = {}  # by sample index
        self._is_pinned = False

    async def run(self) -> None:
        status = "OK"
        try:
            await self._run()
        except asyncio.CancelledError:
            status = "DEADLINE_EXCEEDED" if self.deadline.has_passed else "CANCELLED"
            raise
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
            raise
        except BaseException as exc:
            status = status_of(exc).name
            raise
        finally:
            version = self.state.version if self._is_pinned else None
            seconds = time.monotonic() - self.state.started_at
            self.core.metrics.request_ended(version, status, self.num_tokens, seconds)

    async def _run(self) -> None:
        core, state = self.core, self.state
        route = validate_request(self.request, core.registry.limits)
        if state.request_id in core.inflight:
            raise InvalidRequestError(
                "request_id", f"{state.request_id!r} is already in flight at this router"
            )
        core.inflight[state.request_id] = state
        try:
            min_version = (
                self.request.min_policy_version if self.request.HasField("min_policy_version") else None
            )
            state.version = await core.admission.pin(
                state.request_id, min_version, self.deadline, is_aborted=lambda: state.is_abort_requested
            )
            self._is_pinned = True
            while True:
                handle, reservation = await core.dispatcher.acquire(route, state, self.deadline)
                self.request.policy_version = state.version
                attempt = Attempt(handle, self.request, state, reservation, self.deadline)
                inflight = core.metrics.inflight.labels(handle.worker_id)
                inflight.inc()
                try:
                    report = await attempt.run(self._send)
                finally:
                    reservation.release()
                    inflight.dec()
                if await self._is_done(attempt, report):
                    return
        finally:
            core.inflight.pop(state.request_id, None)

    async def _is_done(self, attempt: Attempt, report: AttemptReport) -> bool:
        """True when the request completed; False to run it again; raises to end it."""
        state = self.state
        committed = self.core.admission.version
        decision = decide(
            report,
            state.request_id,
            self.core.max_attempts,
            is_superseded=committed is not None and committed > state.version,
        )
        if decision.action is Action.DONE:
            self._write_audit()
            return True
        if decision.action is Action.FAIL:
            raise decision.error or attempt.error or RuntimeError("attempt failed without a status")
        if state.is_abort_requested:
            raise RequestAbortedError(f"request {state.request_id} aborted before it produced anything")
        self.core.metrics.retries.labels(report.outcome.value).inc()
        if report.outcome is Outcome.WORKER_LOST:
            self.core.registry.mark_suspect(attempt.handle)
        if decision.action is Action.RETRY_SAME_VERSION:
            state.excluded.add(attempt.handle.key)
            return False
        newer = await self.core.admission.pin(
            state.request_id,
            state.version + 1,
            self.deadline,
            bounded=False,
            is_aborted=lambda: state.is_abort_requested,
        )
        state.move_to(newer)
        state.is_rerun = True
        return False

    async def _send(self, response: common_pb2.GenerateResponse) -> None:
        self._observe(response)
        await self.write(response)

    def _observe(self, response: common_pb2.GenerateResponse) -> None:
        """Check the version guard, then count the response for metrics and the audit log."""
        if response.policy_version != self.state.version:
            raise MixedVersionError(
                self.state.request_id,
                f"a worker answered with policy version {response.policy_version} "
                f"for a request pinned to {self.state.version}",
            )
        tokens = tokens_of(response)  # FINAL: a whole sample, in its finish
        if tokens.token_ids:
            now = time.monotonic()
            num_tokens = len(tokens.token_ids)
            last = self._last_chunk_at.get(response.sample_index)
            if self.num_tokens == 0:
                self.core.metrics.ttft.observe(now - self.state.started_at)
            elif last is not None:  # never in FINAL: a sample's one message has no gap to time
                self.core.metrics.inter_token.observe((now - last) / num_tokens)
            self._last_chunk_at[response.sample_index] = now
            self.num_tokens += num_tokens
        if self.assembler is not None:
            self.assembler.add(response)
            if self._strip_support_sizes and tokens.support_sizes:  # (touch no empty default)
                tokens.ClearField("support_sizes")

    def _write_audit(self) -> None:
        if self.core.audit is None or self.assembler is None:
            return
        record = audit_record(self.request, self.state.version, self.assembler.samples(), self.core.router_id)
        self.core.audit.write(record)
