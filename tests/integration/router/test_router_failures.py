"""Failures under the router (I5): a worker killed with streams in flight, a router killed and
restarted. Real etcd, coordinator, worker and router processes; nothing may hang."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field

import pytest
from fixtures.grpc_client import worker_info
from routerkit import FAST_LEASE_TTL, PROMPT, cluster_spec, wait_until

from epochserve.app.local.cluster import LocalCluster
from epochserve.client.errors import GenerationError, UnavailableError
from epochserve.client.generation import AsyncGenerationClient, GenerationClient
from epochserve.proto.convert import OutputMode
from epochserve.proto.results import GenerateResult, SampleFinished, TokenChunk
from epochserve.sampling import SamplingParams

NUM_TOKENS = 120
LONG = SamplingParams(temperature=1.0, max_tokens=NUM_TOKENS, ignore_eos=True, seed=3)


@dataclass
class Stream:
    """One streamed request as the client saw it."""

    request_id: str
    token_times: list[float] = field(default_factory=list)  # time.monotonic() of each chunk
    finished: list[SampleFinished] = field(default_factory=list)
    error: GenerationError | None = None


async def consume(
    client: AsyncGenerationClient, stream: Stream, n: int = 1, output_mode: OutputMode = OutputMode.STREAM
) -> None:
    try:
        events = client.stream(
            PROMPT, LONG, n=n, request_id=stream.request_id, timeout=120, output_mode=output_mode
        )
        async for event in events:
            if isinstance(event, TokenChunk):
                stream.token_times.append(event.received_at)
            else:
                stream.finished.append(event)
    except GenerationError as exc:
        stream.error = exc


async def kill_a_worker_under_load(
    cluster: LocalCluster, output_mode: OutputMode
) -> tuple[list[Stream], float]:
    """24 streams over 2 workers running 4 sequences each; worker-1 is killed once it runs some
    of them (which streamed tokens, in STREAM) and queues others (which streamed nothing)."""
    victim = cluster.workers[1]
    async with AsyncGenerationClient(cluster.router_address) as client:
        streams = [Stream(f"s{i}") for i in range(24)]
        tasks = [asyncio.ensure_future(consume(client, s, output_mode=output_mode)) for s in streams]

        def victim_is_busy() -> bool:
            info = worker_info(victim.address)
            return (
                info.num_running_seqs > 0
                and info.num_waiting_seqs > 0
                and (output_mode is OutputMode.FINAL or sum(bool(s.token_times) for s in streams) >= 4)
            )

        while not await asyncio.to_thread(victim_is_busy):
            await asyncio.sleep(0.02)
        # Freeze it first, so that what it already sent reaches the clients: the streams with
        # tokens at `frozen_at` are then exactly those it had delivered tokens to.
        victim.signal(signal.SIGSTOP)
        await asyncio.sleep(0.5)
        frozen_at = time.monotonic()
        victim.signal(signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*tasks), 90)  # none hangs
    return streams, frozen_at


@pytest.mark.parametrize("output_mode", list(OutputMode))
def test_a_killed_worker_costs_only_the_streams_that_had_tokens(versions, tmp_path, output_mode):
    a_dir, _models, _root = versions
    spec = cluster_spec(
        tmp_path,
        a_dir,
        worker_args=("--max-num-seqs", "4"),
        router_args=("--policy", "round-robin"),
        lease_ttl=FAST_LEASE_TTL,  # the killed worker leaves the registry within seconds
    )
    with LocalCluster(spec) as cluster:
        streams, frozen_at = asyncio.run(kill_a_worker_under_load(cluster, output_mode))
        lost = [s for s in streams if s.error is not None]
        done = [s for s in streams if s.error is None]
        if output_mode is OutputMode.STREAM:
            assert lost, "streams running on the killed worker end with an error"
        else:  # FINAL sends a sample only once it ended: nothing of a killed request had been sent
            assert not lost, "FINAL requests on the killed worker re-run elsewhere and complete"
        for s in lost:
            assert isinstance(s.error, UnavailableError), s.error
            assert s.request_id in s.error.details and "after tokens were sent" in s.error.details
            assert s.token_times, "only a stream that had tokens may fail"
        for s in done:
            [end] = s.finished
            assert len(end.sample.token_ids) == NUM_TOKENS and end.sample.finish_reason == "length"
        silent = [s for s in streams if not any(t < frozen_at for t in s.token_times)]
        assert all(s.error is None for s in silent), "a stream with nothing delivered re-runs elsewhere"
        moved = [s for s in done if s.finished[0].sample.diagnostics.attempts == 2]
        assert moved and all(s.finished[0].sample.worker_id == "worker-0" for s in moved)
        # New requests keep working (the dead worker is avoided, then deregistered).
        with GenerationClient(cluster.router_address, timeout=60) as client:
            for i in range(4):
                result = client.generate(PROMPT, SamplingParams(max_tokens=4), request_id=f"after-{i}")
                assert result.samples[0].worker_id == "worker-0"


async def kill_the_router_under_load(cluster: LocalCluster) -> list[Stream]:
    async with AsyncGenerationClient(cluster.router_address) as client:
        streams = [Stream(f"r{i}") for i in range(4)]
        tasks = [asyncio.ensure_future(consume(client, s)) for s in streams]
        while not all(s.token_times for s in streams):
            await asyncio.sleep(0.02)
        cluster.routers[0].signal(signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    return streams


def test_a_killed_router_fails_its_streams_and_a_restarted_one_serves_the_same_clients(versions, tmp_path):
    a_dir, _models, _root = versions
    # The restarted router registers again once the killed one's lease lapsed.
    with LocalCluster(cluster_spec(tmp_path, a_dir, num_workers=1, lease_ttl=FAST_LEASE_TTL)) as cluster:
        address = cluster.router_address
        with GenerationClient(address, timeout=60) as client:
            assert client.generate(PROMPT, SamplingParams(max_tokens=3)).policy_version == 0
            streams = asyncio.run(kill_the_router_under_load(cluster))
            assert all(isinstance(s.error, UnavailableError) for s in streams), [s.error for s in streams]
            worker = cluster.workers[0].address
            wait_until(
                lambda: worker_info(worker).num_running_seqs == 0, 30, "the worker to drop the streams"
            )
            restarted = cluster.restart_router(0)
            assert restarted.address == address
            results = [client.generate(PROMPT, SamplingParams(max_tokens=3)) for _ in range(3)]
            assert all(isinstance(r, GenerateResult) and len(r.samples[0].token_ids) == 3 for r in results)
            assert client.get_policy().router_id == "router-0"
