"""drain=overlap in the engine (worker/engine/drain.py): after the commit of v2, new requests run on
v2's staged twins at once while v0's sequences finish on the live weights, in the same steps; no
sequence sees two versions; when v0 retired the twins become the live weights. Also the drain
deadline, and the fallback to finish when no runnable twins are staged.

batch_invariant mode makes a sample's tokens and logprobs independent of what else is in the
batch, so each sample is compared bit for bit with a fresh engine of its version alone."""

from __future__ import annotations

import time

import pytest
from fixtures.engine import SampleResult, make_engine, make_request, run_to_completion
from fixtures.models import build_tiny_model

from epochserve.controlplane.participants.directives import Commit, Fenced
from epochserve.controlplane.store.records import DrainPolicy
from epochserve.errors import VersionMismatchError
from epochserve.proto.convert import is_rollout_abort
from epochserve.worker.engine.sequence import FinishReason
from epochserve.worker.rollout.agent import RolloutAgent
from epochserve.worker.weights.manifest import manifest_of_checkpoint

PROMPTS = {"old": [5, 17, 33, 9, 100, 200], "new": [7, 8, 11, 300, 41], "later": [12, 13, 14, 15]}
SETTINGS = dict(block_size=4, num_kv_blocks=256, batch_invariant=True)


@pytest.fixture(scope="module")
def versions(tmp_path_factory, tiny_model_dirs):
    v0 = tiny_model_dirs["llama"]  # an engine starts serving its model as version 0
    v2 = build_tiny_model("llama", tmp_path_factory.mktemp("overlap") / "v2", seed=7)
    manifest_of_checkpoint(2, v2).write(v2)
    return v0, v2


def request(name: str, limits, max_tokens: int, policy_version: int | None = None):
    return make_request(
        name, PROMPTS[name], limits, n=2, policy_version=policy_version, max_tokens=max_tokens,
        temperature=1.0, top_p=0.9, seed=11, ignore_eos=True,
    )  # fmt: skip


def alone(model_dir, name: str, max_tokens: int, **overrides) -> dict[int, SampleResult]:
    engine = make_engine(model_dir, **{**SETTINGS, **overrides})
    return run_to_completion(engine, [request(name, engine.limits, max_tokens)])[name]


def staged_engine(v0, v2, **overrides):
    engine = make_engine(v0, **{**SETTINGS, **overrides})
    engine.weights.stage(2, str(v2), None)
    result = engine.weights.wait(60)
    assert result is not None and result.staged is not None and result.staged.runnable, result
    engine.weights.take_result()
    return engine


def record(results: dict, outputs, when: dict) -> None:
    for out in outputs:
        sample = results.setdefault(out.request_id, {}).setdefault(out.sample_index, SampleResult())
        sample.token_ids += out.token_ids
        sample.logprobs += out.processed_logprobs
        sample.policy_versions.add(out.policy_version)
        if out.token_ids:
            when.setdefault((out.request_id, "first"), time.monotonic())
        if out.finish is not None:
            sample.finish = out.finish
            when[(out.request_id, "end")] = time.monotonic()


def step_until_idle(engine, results, when, max_steps=2000) -> None:
    for _ in range(max_steps):
        if not engine.has_work():
            return
        record(results, engine.step(), when)
    raise AssertionError("the engine did not finish")


@pytest.mark.parametrize("run_ahead", ["off", "on"])
def test_new_requests_run_on_the_twins_while_the_old_version_finishes(versions, run_ahead):
    v0, v2 = versions
    engine = staged_engine(v0, v2, async_scheduling=run_ahead)
    results: dict = {}
    when: dict = {}
    engine.add_request(request("old", engine.limits, max_tokens=24))
    for _ in range(4):
        record(results, engine.step(), when)

    record(results, engine.begin_drain(2, DrainPolicy.OVERLAP), when)
    assert engine.draining is not None and engine.draining.overlapping and engine.policy_version == 2
    engine.add_request(request("new", engine.limits, max_tokens=8))  # unpinned: starts on v2 now
    run_ahead_before = engine.num_run_ahead_steps
    step_until_idle(engine, results, when)

    assert when[("new", "end")] < when[("old", "end")]  # v2 served while v0 still ran
    # run-ahead: steps of both versions queued behind the pair in flight, outputs unchanged
    assert (engine.num_run_ahead_steps > run_ahead_before) == (run_ahead == "on")
    assert engine.ready_to_promote and not engine.ready_to_swap
    for name, version, model_dir, max_tokens in (("old", 0, v0, 24), ("new", 2, v2, 8)):
        reference = alone(model_dir, name, max_tokens)
        for index, sample in results[name].items():
            assert sample.policy_versions == {version}, name
            assert sample.token_ids == reference[index].token_ids, name
            assert sample.logprobs == reference[index].logprobs, name

    fingerprint = engine.weights.swap(2)  # the agent's promotion: twins copied into the live weights
    engine.complete_swap(2)
    assert engine.draining is None and fingerprint == engine.weights.fingerprint()
    later = run_to_completion(engine, [request("later", engine.limits, max_tokens=6)])["later"]
    reference = alone(v2, "later", 6)
    assert [s.logprobs for s in later.values()] == [s.logprobs for s in reference.values()]
    report = engine.last_drain.report()
    assert (report.drain, report.finished_previous, report.aborted_previous) == (DrainPolicy.OVERLAP, 2, 0)
    assert report.first_token_seconds is not None and report.retire_seconds >= report.first_token_seconds


@pytest.mark.parametrize("run_ahead", ["off", "on"])
def test_the_new_version_starts_at_once_when_the_old_one_fills_the_batch(versions, run_ahead):
    """max_num_seqs = 2 and v0's two samples hold both slots: outside an overlap a request waits for
    one to end; during one v2 has slots of its own and starts in the next step (v0's are still
    full: a v0 pin waits), and each sample still equals its version's alone."""
    v0, v2 = versions
    engine = staged_engine(v0, v2, async_scheduling=run_ahead, max_num_seqs=2)
    results: dict = {}
    when: dict = {}
    engine.add_request(request("old", engine.limits, max_tokens=24))
    for _ in range(3):
        record(results, engine.step(), when)
    engine.add_request(request("later", engine.limits, max_tokens=4))
    for _ in range(3):
        record(results, engine.step(), when)
    assert engine.num_running == 2 and ("later", "first") not in when  # no slot: it waits
    record(results, engine.abort_request("later", "not needed"), when)  # also flushes a step in flight
    results.pop("later")
    when.pop(("later", "end"))

    record(results, engine.begin_drain(2, DrainPolicy.OVERLAP), when)
    engine.add_request(request("new", engine.limits, max_tokens=8))
    engine.add_request(request("later", engine.limits, max_tokens=4, policy_version=0))
    for _ in range(3):
        record(results, engine.step(), when)
    assert engine.num_running == 4 and engine.num_waiting == 2  # v0's pin waits for a v0 slot
    assert ("new", "first") in when and ("old", "end") not in when
    step_until_idle(engine, results, when)
    assert when[("new", "end")] < when[("old", "end")] < when[("later", "first")]
    for name, version, model_dir, max_tokens in (("old", 0, v0, 24), ("new", 2, v2, 8), ("later", 0, v0, 4)):
        reference = alone(model_dir, name, max_tokens)
        for index, sample in results[name].items():
            assert sample.policy_versions == {version}, name
            assert sample.token_ids == reference[index].token_ids, name
            assert sample.logprobs == reference[index].logprobs, name


def test_old_version_pins_start_during_the_overlap_and_retire_with_it(versions):
    v0, v2 = versions
    engine = staged_engine(v0, v2)
    engine.begin_drain(2, DrainPolicy.OVERLAP)
    assert engine.ready_to_promote  # nothing of v0 ran: retired at once
    engine = staged_engine(v0, v2)
    engine.add_request(request("old", engine.limits, max_tokens=4))
    engine.begin_drain(2, DrainPolicy.OVERLAP)
    engine.add_request(request("later", engine.limits, max_tokens=4, policy_version=0))
    results: dict = {}
    step_until_idle(engine, results, {})
    assert results["later"][0].policy_versions == {0}
    assert engine.last_drain.report().finished_previous == 4
    # Retired, not yet promoted (the agent promotes between steps): the old version takes no more
    # work, or the promotion would swap its weights under it.
    assert engine.ready_to_promote
    with pytest.raises(VersionMismatchError, match="retired"):
        engine.add_request(request("old", engine.limits, max_tokens=4, policy_version=0))


def test_the_drain_deadline_aborts_what_the_old_version_still_runs(versions):
    v0, v2 = versions
    engine = staged_engine(v0, v2)
    engine.add_request(request("old", engine.limits, max_tokens=50))
    results: dict = {}
    record(results, engine.step(), {})
    engine.begin_drain(2, DrainPolicy.OVERLAP, deadline_seconds=0.5)
    engine.add_request(request("new", engine.limits, max_tokens=4))
    assert engine.expire_drain(time.monotonic()) == []  # not yet
    record(results, engine.expire_drain(time.monotonic() + 1.0), {})
    finishes = [s.finish for s in results["old"].values()]
    assert all(f.reason is FinishReason.ABORT and is_rollout_abort(f.abort_reason) for f in finishes)
    assert "drain deadline of 0.5 s" in finishes[0].abort_reason
    assert engine.ready_to_promote
    step_until_idle(engine, results, {})
    assert results["new"][0].policy_versions == {2} and len(results["new"][0].token_ids) == 4
    assert engine.last_drain.report().aborted_previous == 2


def test_without_runnable_twins_an_overlap_is_applied_as_finish(versions):
    v0, _ = versions
    engine = make_engine(v0, **SETTINGS)
    engine.add_request(request("old", engine.limits, max_tokens=4))
    engine.begin_drain(2, DrainPolicy.OVERLAP)
    drain = engine.draining
    assert drain is not None and drain.policy is DrainPolicy.FINISH
    assert drain.reason == "no verified staged weights of v2"
    assert engine.policy_version == 0  # new requests wait for the swap, as under finish


def test_an_old_version_sequence_never_hits_blocks_the_new_version_cached(versions):
    """During the overlap both versions admit sequences: a prompt v2 computed and cached must be
    recomputed, on v0's weights, for a request pinned to v0 (the cache key is the sequence's own
    version, never the engine's newest)."""
    v0, v2 = versions
    engine = staged_engine(v0, v2)
    engine.add_request(request("old", engine.limits, max_tokens=40))  # keeps the overlap open
    engine.begin_drain(2, DrainPolicy.OVERLAP)
    engine.add_request(request("new", engine.limits, max_tokens=2))
    results: dict = {}
    while "new" not in results or any(s.finish is None for s in results["new"].values()):
        record(results, engine.step(), {})
    hits = engine.block_manager.prefix_cache_hits
    repeated = make_request(
        "new-on-v0", PROMPTS["new"], engine.limits, n=2, policy_version=0, max_tokens=8,
        temperature=1.0, top_p=0.9, seed=11, ignore_eos=True,
    )  # fmt: skip
    engine.add_request(repeated)
    step_until_idle(engine, results, {})
    assert engine.block_manager.prefix_cache_hits == hits
    # v0's cache entries went with the overlap's start, so sample 1 computes the prompt itself too
    reference = alone(v0, "new", 8, enable_prefix_cache=False)
    for index, sample in results["new-on-v0"].items():
        assert sample.policy_versions == {0}
        assert sample.logprobs == reference[index].logprobs


def test_the_next_version_is_staged_into_the_promoted_twins_buffers(versions, tmp_path):
    """The twins keep their addresses from one rollout to the next (decode graphs captured on them
    stay valid), and what a later staging loads into them is that version, not the last one."""
    v0, v2 = versions
    engine = staged_engine(v0, v2)
    twins = engine.weights.verified().buffers
    engine.begin_drain(2, DrainPolicy.OVERLAP)
    engine.weights.swap(2)
    engine.complete_swap(2)
    v3 = build_tiny_model("llama", tmp_path / "v3", seed=9)
    manifest_of_checkpoint(3, v3).write(v3)
    engine.weights.stage(3, str(v3), None)
    result = engine.weights.wait(60)
    assert result is not None and result.staged is not None and result.staged.buffers is twins
    engine.weights.take_result()
    results: dict = {}
    when: dict = {}
    engine.add_request(request("old", engine.limits, max_tokens=16))  # on v2, the live weights now
    for _ in range(4):  # both samples past their prompts, as in the reference
        record(results, engine.step(), when)
    engine.begin_drain(3, DrainPolicy.OVERLAP)
    engine.add_request(request("later", engine.limits, max_tokens=6))  # on v3, in the twins
    step_until_idle(engine, results, when)
    for name, model_dir, max_tokens in (("old", v2, 16), ("later", v3, 6)):
        reference = alone(model_dir, name, max_tokens)
        assert [s.logprobs for s in results[name].values()] == [s.logprobs for s in reference.values()]


class FakeParticipant:
    """The control plane's side of RolloutAgent, scripted: directives in order, reports recorded."""

    can_accept_work = True
    is_closed = False

    def __init__(self, *directives) -> None:
        self.directives = list(directives)
        self.reports: list[tuple] = []

    def next_directive(self, timeout: float):
        return self.directives.pop(0) if self.directives else None

    def __getattr__(self, name: str):
        if not name.startswith("report_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.reports.append((name, args, kwargs))


def test_a_worker_fenced_during_an_overlap_keeps_the_twins_and_finishes_both_versions(versions):
    """A lease lost mid-overlap (a starved keepalive on a loaded machine) fences the worker: it stops
    taking requests, but the committed twins that v runs on stay; dropping them (as for uncommitted
    weights) failed every running request and stopped the engine loop."""
    v0, v2 = versions
    engine = staged_engine(v0, v2)
    results: dict = {}
    when: dict = {}
    engine.add_request(request("old", engine.limits, max_tokens=24))
    record(results, engine.step(), when)
    participant = FakeParticipant(Commit(2, DrainPolicy.OVERLAP))
    agent = RolloutAgent(participant, "worker-0")  # type: ignore[arg-type]
    record(results, agent(engine), when)
    assert engine.draining is not None and engine.draining.overlapping
    engine.add_request(request("new", engine.limits, max_tokens=8))
    record(results, engine.step(), when)
    participant.directives.append(Fenced("lease lost"))
    for _ in range(2000):  # the engine loop: a step, then the agent between steps
        if not engine.has_work() and agent.retiring is None:
            break
        record(results, engine.step(), when)
        record(results, agent(engine), when)
    assert [results[name][0].finish.reason for name in ("old", "new")] == [FinishReason.LENGTH] * 2
    assert results["old"][0].policy_versions == {0} and results["new"][0].policy_versions == {2}
    assert engine.draining is None and engine.policy_version == 2  # the twins were promoted
    assert ("report_retired", (0, engine.weights.fingerprint()), {}) in participant.reports
