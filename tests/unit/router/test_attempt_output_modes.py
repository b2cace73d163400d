"""An attempt (router/attempt.py) forwarding OUTPUT_MODE_FINAL messages, on a scripted worker call:
each sample's tokens are given back to the worker's load when its one message arrives, nothing is
left over, and a drain=abort finish that carries a partial sample is still held back for a re-run."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from epochserve.proto.convert import rollout_abort_reason
from epochserve.proto.v1 import common_pb2
from epochserve.router.attempt import Attempt, FlowState
from epochserve.router.load import Reservation, WorkerLoad
from epochserve.router.retry import Outcome
from epochserve.router.waiting import Deadline

ESTIMATE = 100  # the request's estimated cost in tokens


class ScriptedCall:
    """A SessionCall that reads `messages`, then None."""

    def __init__(self, messages: list[common_pb2.GenerateResponse]) -> None:
        self._messages = list(messages)

    async def read(self) -> common_pb2.GenerateResponse | None:
        return self._messages.pop(0) if self._messages else None

    def cancel(self, reason: str = "") -> None:
        pass


def final_message(index: int, num_tokens: int, abort_reason: str = "") -> common_pb2.GenerateResponse:
    reason = common_pb2.FINISH_REASON_ABORT if abort_reason else common_pb2.FINISH_REASON_LENGTH
    output = common_pb2.GenerateChunk(token_ids=[3] * num_tokens, logprobs=[-1.0] * num_tokens)
    finish = common_pb2.GenerateFinish(finish_reason=reason, abort_reason=abort_reason, output=output)
    return common_pb2.GenerateResponse(request_id="r", sample_index=index, policy_version=0, finish=finish)


def run_attempt(messages: list[common_pb2.GenerateResponse], n: int):
    """(report, [(load.tokens, load.seqs) as each message was sent], the load after release)."""
    load = WorkerLoad()
    seen: list[tuple[int, int]] = []

    async def start(request, deadline):
        return ScriptedCall(messages)

    async def send(response: common_pb2.GenerateResponse) -> None:
        seen.append((load.tokens, load.seqs))

    async def main():
        handle = SimpleNamespace(session=SimpleNamespace(start=start), worker_id="w0", key="w0@here")
        request = common_pb2.GenerateRequest(request_id="r", n=n, output_mode=common_pb2.OUTPUT_MODE_FINAL)
        reservation = Reservation(load, ESTIMATE, n)
        attempt = Attempt(handle, request, FlowState("r", n), reservation, Deadline.after(10))  # type: ignore[arg-type]
        report = await attempt.run(send)
        reservation.release()
        return report

    report = asyncio.run(main())
    return report, seen, load


def test_final_gives_each_samples_tokens_back_when_it_ends_and_leaves_nothing_behind():
    report, seen, load = run_attempt([final_message(1, 7), final_message(0, 5)], n=2)
    assert report.outcome is Outcome.COMPLETED and report.has_sent
    assert seen == [(ESTIMATE - 7, 1), (ESTIMATE - 12, 0)]
    assert (load.tokens, load.seqs, load.requests) == (0, 0, 0)


def test_a_final_drain_abort_finish_with_a_partial_sample_is_held_back_for_a_rerun():
    retired = final_message(0, 4, abort_reason=rollout_abort_reason(1))
    report, seen, load = run_attempt([retired], n=1)
    assert report.outcome is Outcome.RETIRED and not report.has_sent and seen == []
    assert (load.tokens, load.seqs, load.requests) == (0, 0, 0)
