"""Attempt: one call of a request on one worker, forwarding what may reach the client.

`run(send)` passes the worker's messages to `send` as they arrive and returns an AttemptReport
for router/retry.py. It holds back exactly the messages after which the request may still run
elsewhere:
- a finish whose abort reason says a drain=abort rollout retired the sample (RETIRED);
- an ABORT finish the router did not ask for (the worker is shutting down) while nothing was
  sent yet (WORKER_LOST).
Each finish it forwards carries the router's part of the diagnostics (attempts, rerun flag).
In OUTPUT_MODE_FINAL the only messages are finishes (each carrying its whole sample), so nothing
reaches the client before a first sample ended: a worker lost or a version retired before then
re-runs the request (the whole of it, as for STREAM before its first chunk).

The request runs on the worker's Session stream (router/session.py), and always ends with the
attempt: when it stops early (client cancel, deadline, an error in `send`) it is cancelled there,
and the worker frees the sequences. The remaining deadline travels with the request. Messages are
read and written one by one (no async-generator layers): each layer costs CPU per message, which
on a small machine is latency.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from epochserve.proto.convert import is_rollout_abort
from epochserve.proto.results import tokens_of
from epochserve.proto.v1 import common_pb2
from epochserve.router.load import Reservation
from epochserve.router.registry import WorkerHandle
from epochserve.router.retry import AttemptReport, Outcome, classify_status
from epochserve.router.session import SessionCall
from epochserve.router.waiting import Deadline

logger = logging.getLogger(__name__)
# Merge a lagging STREAM request's queued chunks (merged_by_sample); EPOCHSERVE_MERGE_CHUNKS=0 turns
# it off, for measuring what it gives.
MERGE_CHUNKS = os.environ.get("EPOCHSERVE_MERGE_CHUNKS", "1") == "1"

# Forwards one message to the client (the flow's guard and metrics, then context.write).
Send = Callable[[common_pb2.GenerateResponse], Awaitable[None]]


@dataclass(slots=True)
class FlowState:
    """One request's progress through the router. Created by router/flow.py at admission; the
    flow and its attempts update it; the service reads it to serve Abort."""

    request_id: str
    n: int
    version: int = 0  # the pinned policy version
    num_attempts: int = 0  # worker calls started
    is_rerun: bool = False  # moved to a newer version after running (Diagnostics.rerun_under_new_version)
    has_sent: bool = False  # something of the response reached the client
    is_abort_requested: bool = False  # the client called Abort
    excluded: set[str] = field(default_factory=set)  # worker keys this request failed on, at `version`
    handle: WorkerHandle | None = None  # the worker of the current attempt
    started_at: float = field(default_factory=time.monotonic)

    def move_to(self, version: int) -> None:
        """Pin to a newer version; the workers that failed the old one may serve this one."""
        self.version = version
        self.excluded.clear()


class Attempt:
    def __init__(
        self,
        handle: WorkerHandle,
        request: common_pb2.GenerateRequest,
        state: FlowState,
        reservation: Reservation,
        deadline: Deadline,
    ) -> None:
        self.handle = handle
        self.request = request  # pinned: policy_version set
        self.state = state
        self.reservation = reservation
        self.deadline = deadline
        self.error: grpc.aio.AioRpcError | None = None  # the worker's status when the call failed

    async def run(self, send: Send) -> AttemptReport:
        """Forward the worker's messages through `send` until the call ends; never raises for the
        worker's failures (they are the report's outcome); raises what `send` raises."""
        state = self.state
        state.num_attempts += 1
        state.handle = self.handle
        call: SessionCall | None = None
        try:
            call = await self.handle.session.start(self.request, self.deadline)
            while (response := await call.read()) is not None:
                if response.HasField("finish"):
                    held_back = self._hold_back(response.finish)
                    if held_back is not None:
                        return self._end(held_back, response.finish.abort_reason)
                    self._stamp(response.finish.diagnostics)
                    self.reservation.finish_sequence()
                    outgoing = [response]
                elif MERGE_CHUNKS:
                    outgoing = merged_by_sample([response, *call.ready_chunks()])
                else:
                    outgoing = [response]
                for message in outgoing:
                    # a chunk's tokens, or in FINAL a whole sample's, arriving with its finish
                    self.reservation.consume_tokens(len(tokens_of(message).token_ids))
                    await send(message)
                    state.has_sent = True
            return self._end(Outcome.COMPLETED, "")
        except grpc.aio.AioRpcError as exc:
            self.error = exc
            return self._end(
                classify_status(exc.code(), exc.details() or ""), f"{exc.code().name}: {exc.details()}"
            )
        finally:
            if call is not None:
                call.cancel()  # a no-op once the request ended; otherwise the worker aborts it

    def _hold_back(self, finish: common_pb2.GenerateFinish) -> Outcome | None:
        if finish.finish_reason != common_pb2.FINISH_REASON_ABORT:
            return None
        if is_rollout_abort(finish.abort_reason):
            return Outcome.RETIRED
        if not self.state.is_abort_requested and not self.state.has_sent:
            return Outcome.WORKER_LOST
        return None

    def _stamp(self, diagnostics: common_pb2.Diagnostics) -> None:
        diagnostics.attempts = self.state.num_attempts
        diagnostics.rerun_under_new_version = self.state.is_rerun

    def _end(self, outcome: Outcome, detail: str) -> AttemptReport:
        if outcome is not Outcome.COMPLETED:
            logger.info(
                "request %s on %s (v%d, attempt %d): %s %s",
                self.state.request_id,
                self.handle.worker_id,
                self.state.version,
                self.state.num_attempts,
                outcome.value,
                detail,
            )
        return AttemptReport(
            outcome, self.handle.worker_id, detail, self.state.has_sent, self.state.num_attempts
        )


def merged_by_sample(chunks: list[common_pb2.GenerateResponse]) -> list[common_pb2.GenerateResponse]:
    """Chunk messages of one request, one per sample with its chunks' tokens in order (protobuf's
    MergeFrom concatenates the repeated fields), samples in order of first arrival. A router that
    fell behind its worker thus writes, and its client reads, one message per sample for all the
    steps it missed (STREAM allows a chunk per step at most); one that keeps up sends as it came."""
    if len(chunks) == 1 or any(c.policy_version != chunks[0].policy_version for c in chunks):
        return chunks  # never merged across versions: the flow's guard sees each as it came
    by_sample: dict[int, list[common_pb2.GenerateResponse]] = {}
    for chunk in chunks:
        by_sample.setdefault(chunk.sample_index, []).append(chunk)
    merged = []
    for parts in by_sample.values():
        message = parts[0]
        if len(parts) > 1:
            message = common_pb2.GenerateResponse()
            for part in parts:
                message.MergeFrom(part)
        merged.append(message)
    return merged
