"""A worker killed while it runs two versions side by side (drain=overlap) costs only what the rules
for a killed worker allow (docs/design.md §4 step 8, §5; I1, I5).

Real etcd, coordinator, two worker processes and a router (round-robin). Long v0 requests (n = 2)
run on both workers; v1 is rolled out with drain=overlap; once the router pins to v1, more long
requests start, and while the victim still retires v0 (its record says so) and streams v1 as
well, it is frozen, then SIGKILLed. Then:
- every request ends: completed on exactly one version, whose weights its logprobs match
  (transformers, 1e-4) and not the other's; or, in STREAM, UNAVAILABLE naming it "after tokens
  were sent", only when tokens had reached the client. Nothing hangs, nothing mixes versions;
- a request the victim ran re-runs elsewhere when nothing of it was sent (FINAL): a v0 one runs on
  v1 flagged as re-run (no worker serves v0 after the commit) or on v0 elsewhere, never stitched;
- the rollout is DONE once the survivor drained v0 (the victim's lease ends), the survivor's drain
  report counts its v0 samples, and the cluster serves v1: the router, and the victim restarted.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
from dataclasses import dataclass, field

import grpc
import pytest
import torch
from fixtures.engine import hf_model, hf_next_token_logits
from fixtures.grpc_client import generate, worker_info
from fixtures.models import build_tiny_model

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.client.errors import GenerationError, UnavailableError
from epochserve.client.generation import AsyncGenerationClient, GenerationClient
from epochserve.client.publisher import PolicyPublisher
from epochserve.controlplane.admin.client import AdminClient
from epochserve.proto.convert import OutputMode
from epochserve.proto.results import MixedVersionError, Sample, SampleFinished, TokenChunk
from epochserve.proto.v1 import admin_pb2 as pb
from epochserve.sampling import SamplingParams

# Leases of 6 s: a worker decoding two versions at once on a loaded 2-core machine let a 2 s lease
# lapse before the kill (CI, twice: "the victim left before the kill"); the victim's lease then
# ends 6 s after the kill, well inside WAIT_SECONDS.
WORKER_ARGS = ("--lease-ttl", "6", "--block-size", "4")
ROUTER_ARGS = ("--lease-ttl", "6", "--policy", "round-robin")
# v0 requests must outlive the rollout's staging and commit and the v1 requests' start on the
# victim: three times as long as v1's, whatever the machine's speed (tiny model, max len 2048).
OLD_TOKENS = 1200
NEW_TOKENS = 400
MAX_LEN = 2048
N = 2  # samples per request, as RL groups
NUM_REQUESTS = 6  # per phase: 3 per worker
WAIT_SECONDS = 120.0  # bound of every wait on the cluster (a slow 2-core CI machine)


@dataclass
class Stream:
    """One request as the client saw it."""

    request_id: str
    prompt: list[int]
    max_tokens: int
    token_times: list[float] = field(default_factory=list)  # time.monotonic() of each chunk
    chunk_versions: set[int] = field(default_factory=set)
    samples: list[Sample] = field(default_factory=list)
    error: GenerationError | MixedVersionError | None = None

    @property
    def ended(self) -> bool:
        return self.error is not None or len(self.samples) == N


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(A's directory: version 0, {version: transformers model} for 0 and 1, a root for checkpoints)."""
    root = tmp_path_factory.mktemp("versions")
    a_dir = build_tiny_model("llama", root / "A", seed=0, max_position_embeddings=MAX_LEN)
    b_model = hf_model(build_tiny_model("llama", root / "B-raw", seed=1, max_position_embeddings=MAX_LEN))
    return a_dir, {0: hf_model(a_dir), 1: b_model}, root


async def consume(client: AsyncGenerationClient, stream: Stream, output_mode: OutputMode) -> None:
    sampling = SamplingParams(temperature=1.0, max_tokens=stream.max_tokens, ignore_eos=True)
    events = client.stream(
        stream.prompt, sampling, n=N, request_id=stream.request_id, timeout=300, output_mode=output_mode
    )
    try:
        async for event in events:
            if isinstance(event, TokenChunk):
                stream.token_times.append(event.received_at)
                stream.chunk_versions.add(event.policy_version)
            elif isinstance(event, SampleFinished):
                stream.samples.append(event.sample)
    except (GenerationError, MixedVersionError) as exc:
        stream.error = exc


async def until(predicate, what: str, timeout: float = WAIT_SECONDS) -> None:
    """Poll `predicate()` (a bool, or an awaitable of one) until true; streams flow meanwhile. A
    read the coordinator answers UNAVAILABLE counts as "not yet": on a loaded 2-core machine its
    etcd range can outlast the 5 s request timeout (CI: "etcd range: Deadline Exceeded"), which is
    the Admin API's documented answer, not what this test is about."""
    deadline = time.monotonic() + timeout
    while not await _holds(predicate):
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.02)


async def _holds(predicate) -> bool:
    try:
        return bool(await result if inspect.isawaitable(result := predicate()) else result)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return False


def publish_v1(cluster: LocalCluster, b_model, root) -> None:
    """Roll B out as v1 with drain=overlap; returns once committed."""
    publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=WAIT_SECONDS)
    path = publisher.save_checkpoint(1, b_model.state_dict(), root / "B-v1", config_from=root / "A")
    publisher.publish_checkpoint(1, path, drain="overlap", wait_for="committed")


async def kill_during_overlap(
    cluster: LocalCluster, b_model, root, output_mode: OutputMode
) -> tuple[list[Stream], list[Stream], float]:
    """(streams sent before the commit, streams sent after, the moment the victim was frozen)."""
    victim = cluster.workers[1]

    async def running(address: str) -> int:
        return (await asyncio.to_thread(worker_info, address)).num_running_seqs

    async with (
        AsyncGenerationClient(cluster.router_address) as client,
        AdminClient(cluster.admin_address, cluster.token) as admin,
    ):

        async def all_running() -> bool:
            return sum([await running(w.address) for w in cluster.workers]) >= NUM_REQUESTS * N

        async def router_pins_v1() -> bool:
            return (await client.get_policy(timeout=30)).policy_version == 1

        old = [Stream(f"old-{i}", [5, 17, 33, 9, 100 + i], OLD_TOKENS) for i in range(NUM_REQUESTS)]
        tasks = [asyncio.ensure_future(consume(client, s, output_mode)) for s in old]
        if output_mode is OutputMode.STREAM:
            await until(lambda: all(s.token_times for s in old), "every v0 request to stream")
        else:  # FINAL sends nothing before a sample ends: ask the workers
            await until(all_running, "every v0 sequence to run")
        await asyncio.to_thread(publish_v1, cluster, b_model, root)
        await until(router_pins_v1, "the router to pin to v1")

        async def both_overlap() -> bool:
            workers = (await admin.list_workers(timeout=30)).workers
            return len(workers) == 2 and all(w.serving_version == 1 for w in workers)

        # Round-robin spreads the v1 requests over both workers only once both serve v1.
        await until(both_overlap, "both workers to run v1 beside v0")
        on_victim = await running(victim.address)
        new = [Stream(f"new-{i}", [6, 18, 34, 10, 200 + i], NEW_TOKENS) for i in range(NUM_REQUESTS)]
        tasks += [asyncio.ensure_future(consume(client, s, output_mode)) for s in new]

        async def both_versions_on_victim() -> bool:
            workers = (await admin.list_workers(timeout=30)).workers
            record = next((w for w in workers if w.worker_id == "worker-1"), None)
            assert record is not None, "the victim left before the kill"
            if record.serving_version != 1:  # its record does not show the commit yet
                return False
            assert record.HasField("retiring_version"), (
                f"v0 ended on the victim before the kill (raise OLD_TOKENS): {record}"
            )
            if output_mode is OutputMode.STREAM:
                return all(s.token_times for s in new)
            return await running(victim.address) > on_victim

        await until(both_versions_on_victim, "v1 to run beside v0 on the victim")
        # Freeze it first, so that what it already sent reaches the clients: the streams with
        # tokens at `frozen_at` are then exactly those it had delivered tokens to.
        victim.signal(signal.SIGSTOP)
        await asyncio.sleep(0.5)
        frozen_at = time.monotonic()
        victim.signal(signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*tasks), 300)  # none hangs
    return old, new, frozen_at


async def wait_done(cluster: LocalCluster) -> pb.RolloutStatus:
    deadline = time.monotonic() + WAIT_SECONDS
    async with AdminClient(cluster.admin_address, cluster.token) as admin:
        while (status := await admin.get_rollout(1, timeout=30)).rollout.phase != pb.ROLLOUT_PHASE_DONE:
            assert status.rollout.phase == pb.ROLLOUT_PHASE_COMMITTED, f"a committed rollout left: {status}"
            assert time.monotonic() < deadline, f"v1 not DONE after the kill: {status}"
            await asyncio.sleep(0.1)
    return status


def max_logprob_gap(model, prompt: list[int], sample: Sample) -> float:
    tokens = list(sample.token_ids)
    reference = torch.log_softmax(hf_next_token_logits(model, prompt, tokens), dim=-1)
    expected = reference[torch.arange(len(tokens)), torch.tensor(tokens)]
    return (expected - torch.tensor(sample.processed_logprobs)).abs().max().item()


def assert_pure(stream: Stream, models) -> int:
    """A completed request: one version on every message, full length, that version's logprobs."""
    versions = {s.policy_version for s in stream.samples} | {
        s.diagnostics.policy_version for s in stream.samples
    }
    versions |= stream.chunk_versions
    assert len(versions) == 1, f"{stream.request_id} mixes versions {versions}"
    (version,) = versions
    for sample in stream.samples:
        assert len(sample.token_ids) == stream.max_tokens and sample.finish_reason == "length", (
            stream.request_id
        )
        assert max_logprob_gap(models[version], stream.prompt, sample) < 1e-4, stream.request_id
        assert max_logprob_gap(models[1 - version], stream.prompt, sample) > 1e-2, "the other version's"
    return version


async def wait_ready_on_v1(cluster: LocalCluster, worker_id: str) -> None:
    """Until `worker_id` is registered READY serving v1 (a rejoining worker loads it first)."""

    async with AdminClient(cluster.admin_address, cluster.token) as admin:

        async def ready() -> bool:
            workers = (await admin.list_workers(timeout=30)).workers
            return any(
                w.worker_id == worker_id and w.status == pb.WORKER_STATUS_READY and w.serving_version == 1
                for w in workers
            )

        await until(ready, f"{worker_id} to serve v1 again")


@pytest.mark.parametrize("output_mode", [OutputMode.STREAM, OutputMode.FINAL], ids=["stream", "final"])
def test_a_worker_killed_during_an_overlap_drain_loses_nothing_beyond_the_rules(
    models, tmp_path, output_mode
):
    a_dir, hf_models, root = models
    spec = LocalClusterSpec(
        model_dir=a_dir, workdir=tmp_path, num_workers=2, worker_args=WORKER_ARGS, fast_etcd=True,
        num_routers=1, router_args=ROUTER_ARGS,
    )  # fmt: skip
    with LocalCluster(spec) as cluster:
        old, new, frozen_at = asyncio.run(kill_during_overlap(cluster, hf_models[1], root, output_mode))
        status = asyncio.run(wait_done(cluster))
        with GenerationClient(cluster.router_address, timeout=WAIT_SECONDS) as client:
            after = client.generate([5, 17, 33], SamplingParams(max_tokens=4), request_id="after")
        restarted = cluster.restart_worker(1)
        asyncio.run(wait_ready_on_v1(cluster, "worker-1"))
        info = worker_info(restarted.address)
        rejoined = generate(restarted.address, [5, 17, 33], max_tokens=8, temperature=1.0, seed=1)[0]

    streams = old + new
    assert all(s.ended for s in streams), "a request ended with neither a response nor an error"
    lost = [s for s in streams if s.error is not None]
    for s in lost:
        assert isinstance(s.error, UnavailableError), f"{s.request_id}: {s.error!r}"
        assert s.request_id in s.error.details and "after tokens were sent" in s.error.details
        assert any(t < frozen_at for t in s.token_times), "only a request with tokens sent may fail"
    if output_mode is OutputMode.STREAM:
        assert any(s.chunk_versions == {0} for s in lost), "the kill must cut v0 sequences"
        assert any(s.chunk_versions == {1} for s in lost), "... and v1 ones beside them"
    else:  # FINAL: nothing of a killed request had been sent
        assert not lost, "FINAL requests on the killed worker re-run elsewhere and complete"
    completed = [s for s in streams if s.error is None]
    versions = {s.request_id: assert_pure(s, hf_models) for s in completed}
    assert all(versions[s.request_id] == 1 for s in new if s.error is None), "admitted on v1"
    silent = [s for s in streams if not any(t < frozen_at for t in s.token_times)]
    assert all(s.error is None for s in silent), "a request with nothing delivered re-runs elsewhere"
    rerun = [s for s in completed if any(x.diagnostics.attempts > 1 for x in s.samples)]
    for s in rerun:
        assert all(x.worker_id == "worker-0" for x in s.samples), s.request_id
        moved = versions[s.request_id] == 1 and s in old
        assert moved == all(x.diagnostics.rerun_under_new_version for x in s.samples), s.request_id
    if output_mode is OutputMode.FINAL:
        assert any(s in old for s in rerun), "the victim's v0 requests re-run"

    # DONE: the survivor drained v0 and every live worker serves v1; its report counts its v0 samples.
    assert all(w.serving_version == 1 and not w.HasField("retiring_version") for w in status.workers)
    survivor = next(w for w in status.workers if w.worker_id == "worker-0")
    finished_v0 = sum(
        x.worker_id == "worker-0" and x.policy_version == 0 for s in completed for x in s.samples
    )
    report = survivor.last_drain
    assert report.drain == pb.DRAIN_POLICY_OVERLAP and report.version == 1
    assert (report.finished_previous, report.aborted_previous) == (finished_v0, 0)
    assert finished_v0 > 0 and report.first_token_seconds < report.retire_seconds
    assert after.policy_version == 1
    assert info.policy_version == 1 and rejoined.versions == {1}
    tokens = list(rejoined.token_ids)
    reference = torch.log_softmax(hf_next_token_logits(hf_models[1], [5, 17, 33], tokens), dim=-1)
    expected = reference[torch.arange(len(tokens)), torch.tensor(tokens)]
    assert (expected - torch.tensor(rejoined.logprobs)).abs().max().item() < 1e-4
