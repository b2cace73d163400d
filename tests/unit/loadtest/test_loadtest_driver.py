"""The load driver against a scripted client (no network): bounds, closed and open loop, how every
way a request can end is recorded, and the inter-token maths on chunk arrival times."""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest

from epochserve.client.errors import AbortedError
from epochserve.loadtest.config import LoadPlan
from epochserve.loadtest.driver import LoadDriver, RunState
from epochserve.loadtest.records import MIXED_VERSIONS
from epochserve.loadtest.workload import LengthDistribution, SyntheticWorkload
from epochserve.proto.convert import OutputMode
from epochserve.proto.results import Diagnostics, MixedVersionError, Sample, SampleFinished, TokenChunk

pytestmark = pytest.mark.timeout(30)  # a driver that hangs fails here, not after ten minutes


def finished(rid: str, index: int, version: int, num_tokens: int, at: float) -> SampleFinished:
    diagnostics = Diagnostics("w0", 1, version, 7, "eager", 0, 0.0, 0.0, 0.0, 1, False, 0)
    sample = Sample(index, version, (5,) * num_tokens, (-0.5,) * num_tokens, (), (), (), "length", "", 3,
                    "w0", diagnostics)  # fmt: skip
    return SampleFinished(rid, sample, at)


def chunk(rid: str, index: int, version: int, num_tokens: int, at: float) -> TokenChunk:
    return TokenChunk(rid, index, version, (5,) * num_tokens, (-0.5,) * num_tokens, (), at)


class ScriptedClient:
    """stream() plays `script(request_id, n)`: a list of events, or an exception to raise after them."""

    def __init__(self, script, hold: asyncio.Event | None = None) -> None:
        self.script = script
        self.hold = hold  # when set, every stream waits for it first
        self.num_calls = 0
        self.output_modes: set[OutputMode] = set()

    def stream(self, prompt, sampling, *, n, request_id, timeout, output_mode=OutputMode.STREAM):
        self.num_calls += 1
        self.output_modes.add(output_mode)

        async def events():
            if self.hold is not None:
                await self.hold.wait()
            for event in self.script(request_id, n):
                if isinstance(event, BaseException):
                    raise event
                await asyncio.sleep(0)
                yield event

        return events()


def normal_script(rid: str, n: int):
    for index in range(n):
        yield chunk(rid, index, 1, 2, 1.0)
        yield finished(rid, index, 1, 2, 1.0)


def workload(n: int = 1) -> SyntheticWorkload:
    fixed = LengthDistribution.parse("fixed:4")
    return SyntheticWorkload(fixed, fixed, vocab_size=64, n=n, seed=0)


def drive(client, plan: LoadPlan, n: int = 1) -> RunState:
    async def main() -> RunState:
        state = RunState(0.0)
        await LoadDriver(client, workload(n), plan, state).run()  # type: ignore[arg-type]
        return state

    return asyncio.run(main())


def test_closed_loop_sends_exactly_the_requested_count_and_accounts_for_each():
    client = ScriptedClient(normal_script)
    state = drive(client, LoadPlan(concurrency=4, num_requests=25), n=3)
    assert client.num_calls == state.num_sent == 25 == state.num_completed
    assert state.num_errors == 0 and state.num_in_flight == 0
    assert all(r.outcome == "completed" and r.n == 3 and len(r.samples) == 3 for r in state.records)
    assert all(r.policy_version == 1 and r.num_output_tokens == 6 for r in state.records)
    assert state.num_streamed_tokens == 25 * 3 * 2


def test_errors_mixed_versions_and_client_failures_are_explicit_ends():
    calls = iter(range(30))

    def script(rid: str, n: int):
        kind = next(calls) % 3
        yield chunk(rid, 0, 4, 1, 1.0)
        if kind == 0:
            yield AbortedError(grpc.StatusCode.ABORTED, "retired by drain=abort", rid)
        elif kind == 1:
            yield MixedVersionError(rid, "policy version 5 after 4 in one response")
        else:
            yield RuntimeError("client bug")

    state = drive(ScriptedClient(script), LoadPlan(concurrency=3, num_requests=30))
    assert state.num_errors == 30 and state.num_completed == 0
    codes = {r.error_code for r in state.records}
    assert codes == {"ABORTED", MIXED_VERSIONS, "CLIENT_ERROR"}
    assert all(r.chunk_versions == {0: {4}} for r in state.records)


def test_requests_still_open_after_the_drain_timeout_stay_unfinished():
    never = asyncio.Event()  # created outside the loop: only waited on, never set
    plan = LoadPlan(concurrency=2, num_requests=2, drain_timeout_seconds=0.05)
    state = drive(ScriptedClient(normal_script, hold=never), plan)
    assert state.num_sent == 2 and [r.outcome for r in state.records] == ["unfinished", "unfinished"]


def test_ttft_and_inter_token_gaps_come_from_chunk_arrival_times():
    def script(rid: str, n: int):
        yield chunk(rid, 0, 1, 1, 10.0)
        yield chunk(rid, 1, 1, 1, 10.05)  # sample 1's first chunk: not a gap
        yield chunk(rid, 0, 1, 1, 10.2)  # gap 0.2 for one token
        yield chunk(rid, 0, 1, 3, 10.5)  # gap 0.3 over three tokens: 0.1 each
        yield chunk(rid, 1, 1, 2, 10.45)  # gap 0.4 over two tokens
        yield finished(rid, 0, 1, 5, 10.5)
        yield finished(rid, 1, 1, 3, 10.5)

    async def main():
        state = RunState(0.0)
        plan = LoadPlan(concurrency=1, num_requests=1)
        driver = LoadDriver(ScriptedClient(script), workload(2), plan, state, clock=lambda: 9.5)
        await driver.run()
        return state

    [record] = asyncio.run(main()).records
    assert record.ttft_seconds == 0.5
    gaps = sorted(round(g, 6) for g in record.inter_token_seconds)
    assert gaps == [0.1, 0.1, 0.1, 0.2, 0.2, 0.2]
    assert record.num_streamed_tokens == 8 and record.num_output_tokens == 8


def test_in_final_mode_each_sample_counts_its_tokens_once_when_its_one_message_arrives():
    def script(rid: str, n: int):  # what a FINAL stream yields: finishes only, each a whole sample
        yield finished(rid, 1, 1, 5, 10.0)
        yield finished(rid, 0, 1, 3, 10.4)

    async def main():
        state = RunState(0.0)
        plan = LoadPlan(concurrency=1, num_requests=1, output_mode=OutputMode.FINAL)
        client = ScriptedClient(script)
        await LoadDriver(client, workload(2), plan, state, clock=lambda: 9.5).run()  # type: ignore[arg-type]
        return state, client

    state, client = asyncio.run(main())
    [record] = state.records
    assert client.output_modes == {OutputMode.FINAL}
    assert record.ttft_seconds == 0.5  # to the first whole sample
    assert len(record.inter_token_seconds) == 0  # one message per sample: no gap to measure
    assert record.num_streamed_tokens == 8 == record.num_output_tokens == state.num_streamed_tokens
    assert record.chunk_versions == {0: {1}, 1: {1}} and record.policy_version == 1


def test_open_loop_sends_the_poisson_arrivals_of_its_window():
    rate, duration, seed = 400.0, 0.5, 3
    rng, at, expected = random.Random(seed), 0.0, 0
    while at < duration:  # the same schedule the driver follows
        expected += 1
        at += rng.expovariate(rate)
    state = drive(ScriptedClient(normal_script), LoadPlan(rate=rate, duration_seconds=duration, seed=seed))
    assert expected - 15 <= state.num_sent <= expected + 1
    assert state.num_completed == state.num_sent


def test_open_loop_skips_arrivals_beyond_max_in_flight():
    async def main() -> RunState:
        hold = asyncio.Event()
        state = RunState(0.0)
        plan = LoadPlan(rate=1000.0, num_requests=10, max_in_flight=3)
        run = asyncio.ensure_future(
            LoadDriver(ScriptedClient(normal_script, hold), workload(), plan, state).run()
        )
        while state.num_sent + state.num_skipped < 10:
            await asyncio.sleep(0.01)
        hold.set()
        await run
        return state

    state = asyncio.run(main())
    assert (state.num_sent, state.num_skipped, state.num_completed) == (3, 7, 3)
