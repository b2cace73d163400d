"""LoadDriver: sends a Workload's items to a router, closed or open loop, and records every request.

Closed loop: `concurrency` callers, each sending its next request when its last one ended.
Open loop: requests arrive as a Poisson process of `rate` per second (exponential gaps on an
absolute schedule, so a slow event loop catches up instead of drifting), whatever is in flight;
an arrival finding `max_in_flight` requests open is skipped and counted, never queued.

Sending stops at the plan's duration or request count, or on `stop()`; requests in flight then get
`drain_timeout_seconds` to end. Those still open after it are cancelled and stay "unfinished",
which the checker reports as unaccounted (I5): a request must end with a response or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

from epochserve.client.errors import GenerationError
from epochserve.client.generation import AsyncGenerationClient
from epochserve.loadtest.config import LoadPlan
from epochserve.loadtest.records import MIXED_VERSIONS, Outcome, RequestRecord, SampleRecord
from epochserve.loadtest.workload import WorkItem, Workload
from epochserve.proto.convert import OutputMode
from epochserve.proto.results import MixedVersionError, Sample, TokenChunk
from epochserve.sampling import SamplingParams

logger = logging.getLogger(__name__)

TOKEN_TICK_SECONDS = 0.1  # resolution at which streamed tokens are counted over time


class RunState:
    """The records of a run and running counters. Written by the driver, read by the progress
    display while the run goes (same event loop) and by the report after it."""

    def __init__(self, origin: float) -> None:
        self.origin = origin  # time.monotonic() at the start of the run
        self.records: list[RequestRecord] = []
        self.num_completed = 0
        self.num_errors = 0
        self.num_skipped = 0  # open-loop arrivals not sent: max_in_flight requests were open
        self.num_streamed_tokens = 0
        self.sending_stopped_at: float | None = None
        self.token_ticks: defaultdict[int, int] = defaultdict(int)

    @property
    def num_sent(self) -> int:
        return len(self.records)

    @property
    def num_in_flight(self) -> int:
        return self.num_sent - self.num_completed - self.num_errors

    def end(
        self, record: RequestRecord, outcome: Outcome, at: float, code: str | None = None, details: str = ""
    ) -> None:
        record.outcome, record.ended_at, record.error_code, record.error_details = outcome, at, code, details
        if outcome == "completed":
            self.num_completed += 1
        else:
            self.num_errors += 1

    def count_tokens(self, at: float, count: int) -> None:
        self.num_streamed_tokens += count
        self.token_ticks[int((at - self.origin) // TOKEN_TICK_SECONDS)] += count

    def token_arrivals(self) -> list[tuple[float, int]]:
        """(time, tokens) per tick of TOKEN_TICK_SECONDS, for the throughput timeline."""
        return [(self.origin + tick * TOKEN_TICK_SECONDS, n) for tick, n in sorted(self.token_ticks.items())]


class LoadDriver:
    def __init__(
        self,
        client: AsyncGenerationClient,
        workload: Workload,
        plan: LoadPlan,
        state: RunState,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.workload = workload
        self.plan = plan
        self.state = state
        self.clock = clock
        self.sending_over = asyncio.Event()  # set once no more requests will be sent
        self._num_taken = 0

    def stop(self) -> None:
        """Stop sending now; requests in flight still get the drain timeout."""
        self.sending_over.set()

    async def run(self) -> None:
        """Send until the plan's bound or stop(), then drain; returns when every request ended or
        the drain timeout passed (the rest cancelled, left unfinished)."""
        timer = None
        if self.plan.duration_seconds is not None:
            timer = asyncio.get_running_loop().call_later(self.plan.duration_seconds, self.stop)
        tasks: set[asyncio.Task[None]] = set()
        try:
            if self.plan.concurrency is not None:
                tasks = {asyncio.ensure_future(self._caller()) for _ in range(self.plan.concurrency)}
                await self.sending_over.wait()
            else:
                await self._arrivals(tasks)
            self.state.sending_stopped_at = self.clock()
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=self.plan.drain_timeout_seconds)
                if pending:
                    logger.warning("%d request task(s) still open after the drain timeout", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        finally:
            if timer is not None:
                timer.cancel()

    def _take(self) -> WorkItem | None:
        """The next item, or None once the run must stop sending (and from then on)."""
        limit = self.plan.num_requests
        if self.sending_over.is_set() or (limit is not None and self._num_taken >= limit):
            self.sending_over.set()
            return None
        self._num_taken += 1
        if limit is not None and self._num_taken >= limit:
            self.sending_over.set()  # the drain starts now, not when a caller asks for more
        return self.workload.next_item()

    async def _caller(self) -> None:
        while (item := self._take()) is not None:
            await self._send(item)

    async def _arrivals(self, tasks: set[asyncio.Task[None]]) -> None:
        assert self.plan.rate is not None
        rng = random.Random(self.plan.seed)
        next_at = self.clock()
        while True:
            delay = next_at - self.clock()
            if delay > 0:
                with contextlib.suppress(TimeoutError):  # wakes early when sending is stopped
                    await asyncio.wait_for(self.sending_over.wait(), delay)
            item = self._take()
            if item is None:
                return
            if len(tasks) >= self.plan.max_in_flight:
                self.state.num_skipped += 1
            else:
                task = asyncio.ensure_future(self._send(item))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            next_at += rng.expovariate(self.plan.rate)

    async def _send(self, item: WorkItem) -> None:
        """One request from send to its end; every way it can end is recorded."""
        plan, state = self.plan, self.state
        sampling = SamplingParams(
            temperature=plan.temperature, top_p=plan.top_p, max_tokens=item.max_tokens,
            seed=item.seed, ignore_eos=plan.ignore_eos,
        )  # fmt: skip
        record = RequestRecord(
            state.num_sent, uuid.uuid4().hex, item.n, item.max_tokens, item.group_id, self.clock()
        )
        state.records.append(record)
        last_chunk_at: dict[int, float] = {}
        try:
            stream = self.client.stream(
                item.prompt, sampling, n=item.n, request_id=record.request_id,
                timeout=plan.request_timeout_seconds, output_mode=plan.output_mode,
            )  # fmt: skip
            async for event in stream:
                if isinstance(event, TokenChunk):
                    self._on_tokens(
                        record, event.sample_index, event.policy_version, len(event.token_ids),
                        event.received_at, last_chunk_at,
                    )  # fmt: skip
                    continue
                sample = event.sample
                if plan.output_mode is OutputMode.FINAL:  # its tokens came in this one message
                    self._on_tokens(
                        record, sample.sample_index, sample.policy_version, len(sample.token_ids),
                        event.received_at, last_chunk_at,
                    )  # fmt: skip
                record.samples.append(_sample_record(sample))
        except GenerationError as exc:
            state.end(record, "error", self.clock(), exc.code.name, exc.details)
        except MixedVersionError as exc:
            state.end(record, "error", self.clock(), MIXED_VERSIONS, str(exc))
        except Exception as exc:  # a client-side failure is still an explicit end, never a silent one
            logger.exception("request %s failed in the client", record.request_id)
            state.end(record, "error", self.clock(), "CLIENT_ERROR", repr(exc))
        else:
            state.end(record, "completed", self.clock())

    def _on_tokens(
        self,
        record: RequestRecord,
        sample_index: int,
        policy_version: int,
        count: int,
        at: float,
        last_chunk_at: dict[int, float],
    ) -> None:
        """`count` tokens of one sample arrived at `at`: a chunk, or in FINAL the whole sample."""
        record.chunk_versions.setdefault(sample_index, set()).add(policy_version)
        if count == 0:
            return
        if record.first_token_at is None:
            record.first_token_at = at
        previous = last_chunk_at.get(sample_index)
        if previous is not None:
            record.inter_token_seconds.extend([(at - previous) / count] * count)
        last_chunk_at[sample_index] = at
        record.num_streamed_tokens += count
        self.state.count_tokens(at, count)


def _sample_record(sample: Sample) -> SampleRecord:
    diagnostics = sample.diagnostics
    return SampleRecord(
        sample.sample_index, sample.policy_version, diagnostics.policy_version, len(sample.token_ids),
        sample.worker_id, diagnostics.attempts, diagnostics.rerun_under_new_version, sample.num_prompt_tokens,
    )  # fmt: skip
