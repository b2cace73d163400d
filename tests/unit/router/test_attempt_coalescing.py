"""A STREAM attempt (router/attempt.py) that fell behind its worker: the chunks queued on its
SessionCall (router/session.py) go out as one message per sample, tokens in order, each finish
after its sample's chunks; a router that keeps up forwards each chunk as it came."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from epochserve.proto.v1 import common_pb2, worker_pb2
from epochserve.router.attempt import Attempt, FlowState, merged_by_sample
from epochserve.router.load import Reservation, WorkerLoad
from epochserve.router.retry import Outcome
from epochserve.router.session import SessionCall
from epochserve.router.waiting import Deadline


def chunk(index: int, tokens: list[int], version: int = 0) -> common_pb2.GenerateResponse:
    body = common_pb2.GenerateChunk(token_ids=tokens, logprobs=[-float(t) for t in tokens])
    return common_pb2.GenerateResponse(request_id="r", sample_index=index, policy_version=version, chunk=body)


def finish(index: int) -> common_pb2.GenerateResponse:
    done = common_pb2.GenerateFinish(finish_reason=common_pb2.FINISH_REASON_LENGTH)
    return common_pb2.GenerateResponse(request_id="r", sample_index=index, policy_version=0, finish=done)


def test_chunks_merge_per_sample_in_order_of_first_arrival():
    merged = merged_by_sample([chunk(1, [5]), chunk(0, [7]), chunk(1, [6]), chunk(0, [8, 9])])
    assert [(m.sample_index, list(m.chunk.token_ids)) for m in merged] == [(1, [5, 6]), (0, [7, 8, 9])]
    assert list(merged[1].chunk.logprobs) == [-7.0, -8.0, -9.0]
    assert merged[0].request_id == "r" and merged[0].policy_version == 0


def test_chunks_of_two_versions_are_never_merged():
    chunks = [chunk(0, [5]), chunk(0, [6], version=1)]
    assert merged_by_sample(chunks) == chunks


def run_stream(worker_messages: list[common_pb2.GenerateResponse], queued_at_once: bool):
    """The messages an attempt sends when the worker's messages are all queued before it reads
    (`queued_at_once`: it fell behind), or arrive one per send (it keeps up)."""
    load = WorkerLoad()
    sent: list[common_pb2.GenerateResponse] = []

    async def main():
        queue: asyncio.Queue = asyncio.Queue()
        pending = [worker_pb2.SessionResponse(stream_id=1, response=m) for m in worker_messages]
        session = SimpleNamespace(_finish=lambda stream_id: None, _cancel=lambda stream_id, reason: None)
        call = SessionCall(session, 1, queue, 2, Deadline.after(10))  # type: ignore[arg-type]

        def arrive() -> None:
            if pending:
                queue.put_nowait(pending.pop(0))

        for _ in range(len(pending) if queued_at_once else 1):
            arrive()

        async def start(request, deadline):
            return call

        async def send(response: common_pb2.GenerateResponse) -> None:
            sent.append(response)
            arrive()  # the worker's next message comes while this one is written

        handle = SimpleNamespace(session=SimpleNamespace(start=start), worker_id="w0", key="w0@here")
        request = common_pb2.GenerateRequest(request_id="r", n=2)
        reservation = Reservation(load, 100, 2)
        report = await Attempt(handle, request, FlowState("r", 2), reservation, Deadline.after(10)).run(send)  # type: ignore[arg-type]
        reservation.release()
        return report

    report = asyncio.run(main())
    assert report.outcome is Outcome.COMPLETED
    assert (load.tokens, load.seqs, load.requests) == (0, 0, 0)
    return sent


STEPS = [chunk(0, [1]), chunk(1, [2]), chunk(0, [3]), chunk(1, [4]), finish(1), chunk(0, [5]), finish(0)]


def described(messages: list[common_pb2.GenerateResponse]) -> list[tuple[int, object]]:
    return [(m.sample_index, "finish" if m.HasField("finish") else list(m.chunk.token_ids)) for m in messages]


def test_a_router_behind_its_worker_sends_one_message_per_sample_per_turn():
    sent = run_stream(STEPS, queued_at_once=True)
    # the finish of sample 1 stops the first batch: what follows it waits for its own turn
    assert described(sent) == [(0, [1, 3]), (1, [2, 4]), (1, "finish"), (0, [5]), (0, "finish")]


def test_a_router_that_keeps_up_forwards_each_message_as_it_came():
    sent = run_stream(STEPS, queued_at_once=False)
    assert described(sent) == described(STEPS)
