"""Async scheduling (Engine run-ahead) gives exactly the outputs of the synchronous path.

The same event-driven script runs on two engines, run-ahead off and on: requests of every kind
(greedy and seeded sampling with filters, n > 1 sharing a prompt, raw and top logprobs, max_tokens
from 1 up, stop tokens that end a sequence while its successor step is already queued, requests
arriving while others decode, a client abort). Every sample must return the same token ids, the
same logprobs (bit for bit) and the same finish; an aborted one may hold one token more with
run-ahead (the step in flight when the abort came), never a different one. The engines run
batch-invariant: a run-ahead step still carries the row of a sequence that stopped, so without it
that step's product would have another shape and its rows other low bits (layers/ops.py); with
it, any difference is the scheduling's.
"""

from __future__ import annotations

import pytest
import torch
from fixtures.engine import SampleResult, make_engine, make_request, run_to_completion

from epochserve.worker.engine.cuda_graphs import DecodeGraphs
from epochserve.worker.engine.engine import PLACEHOLDER_TOKEN


def _prompts(vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(11)
    return [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in (1, 5, 9, 16, 23)]


def _run(engine, stop: int):
    """Drive one engine through the script; returns its results and the engine."""
    limits, prompts = engine.limits, _prompts(engine.model_config.vocab_size)
    first = [
        make_request("greedy-long", prompts[0], limits, temperature=0.0, max_tokens=20, ignore_eos=True),
        make_request("one-token", prompts[1], limits, temperature=0.0, max_tokens=1),
        make_request("stops", prompts[2], limits, temperature=0.0, max_tokens=30, stop_token_ids=[stop]),
        make_request("sampled-n3", prompts[3], limits, n=3, seed=5, temperature=0.9, top_k=40, top_p=0.9,
                     max_tokens=12, return_raw_logprobs=True, num_top_logprobs=3),
        make_request("to-abort", prompts[4], limits, seed=1, max_tokens=25),
    ]  # fmt: skip
    later = [
        make_request("late-greedy", prompts[2], limits, temperature=0.0, max_tokens=7),  # prefix-cache hit
        make_request("late-sampled", prompts[0], limits, seed=9, min_p=0.05, max_tokens=9),
    ]
    results: dict[str, dict[int, SampleResult]] = {}

    def add(request) -> None:
        engine.add_request(request)
        results[request.request_id] = {i: SampleResult() for i in range(request.n)}

    def record(outputs) -> None:
        for out in outputs:
            sample = results[out.request_id][out.sample_index]
            assert PLACEHOLDER_TOKEN not in out.token_ids
            sample.token_ids += out.token_ids
            sample.logprobs += out.processed_logprobs
            sample.raw_logprobs += out.raw_logprobs
            sample.top_logprobs += out.top_logprobs
            if out.finish is not None:
                sample.finish = out.finish

    for request in first:
        add(request)
    for _ in range(500):
        if not engine.has_work():
            break
        record(engine.step())
        greedy = results["greedy-long"][0].token_ids
        if len(greedy) >= 4 and "late-greedy" not in results:
            for request in later:
                add(request)
        if len(results["to-abort"][0].token_ids) >= 6 and results["to-abort"][0].finish is None:
            record(engine.abort_request("to-abort", "client cancelled"))
    assert not engine.has_work()
    usage = engine.block_usage()
    assert usage.num_free == usage.num_total, "every block returned"
    return results, engine


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs):
    return tiny_model_dirs["llama"]


def test_run_ahead_returns_exactly_the_synchronous_outputs(model_dir):
    stop_token = _stop_token(model_dir)

    sync, sync_engine = _run(_engine(model_dir, "off"), stop_token)
    ahead, ahead_engine = _run(_engine(model_dir, "on"), stop_token)
    _assert_same(sync, ahead)
    assert sync_engine.num_run_ahead_steps == 0
    assert ahead_engine.num_run_ahead_steps >= 10, "run-ahead must actually have happened"


def _engine(model_dir, mode: str, **overrides):
    return make_engine(
        model_dir, block_size=4, num_kv_blocks=256, async_scheduling=mode, batch_invariant=True, **overrides
    )


def _stop_token(model_dir) -> int:
    """A token "stops" generates: its greedy 6th (it then ends while run-ahead is active)."""
    probe = _engine(model_dir, "off")
    prompt = _prompts(probe.model_config.vocab_size)[2]
    request = make_request("p", prompt, probe.limits, temperature=0.0, max_tokens=10, ignore_eos=True)
    return run_to_completion(probe, [request])["p"][0].token_ids[5]


def _assert_same(sync, ahead) -> None:
    assert sync.keys() == ahead.keys()
    assert sync["stops"][0].finish.reason.name == "STOP" and len(sync["stops"][0].token_ids) <= 6
    for request_id, samples in sync.items():
        for index, expected in samples.items():
            got = ahead[request_id][index]
            if request_id == "to-abort":
                assert got.finish.reason == expected.finish.reason
                n = len(expected.token_ids)
                assert got.token_ids[:n] == expected.token_ids and len(got.token_ids) - n in (0, 1)
                assert got.logprobs[:n] == expected.logprobs
                continue
            assert got.token_ids == expected.token_ids, (request_id, index)
            assert got.logprobs == expected.logprobs, (request_id, index)
            assert got.raw_logprobs == expected.raw_logprobs and got.top_logprobs == expected.top_logprobs
            assert got.finish.reason == expected.finish.reason, (request_id, index)


def test_run_ahead_while_requests_wait_for_a_free_slot(model_dir):
    """With max_num_seqs full, waiting requests cannot start, so the next decode step is still
    certain: run-ahead goes on (RL rollouts queue far more samples than the batch holds). A waiting
    request then starts a step later than synchronously, with the same tokens."""
    stop_token = _stop_token(model_dir)
    sync, _ = _run(_engine(model_dir, "off", max_num_seqs=3), stop_token)
    engine = _engine(model_dir, "on", max_num_seqs=3)
    decide = engine._can_run_ahead
    ahead_while_waiting = 0

    def counting(launched):
        nonlocal ahead_while_waiting
        certain = decide(launched)
        ahead_while_waiting += certain and bool(engine.scheduler.waiting)
        return certain

    engine._can_run_ahead = counting
    ahead, _ = _run(engine, stop_token)
    _assert_same(sync, ahead)
    assert ahead_while_waiting >= 5, "run-ahead must have happened with requests waiting"


class EagerDecodeGraphs(DecodeGraphs):
    """The decode graphs' inputs (device block table, rows, lengths) and their captured work, run
    without capture: CPU has no CUDA graphs, but everything but the replay is the same code."""

    num_runs = 0

    def run(self, plan, input_ids=None):
        self.num_runs += 1
        return self._forward(self.stage(plan, input_ids))[: len(plan.seq_lens)]

    def _meta(self, batch, positions):
        meta = super()._meta(batch, positions)
        # The PyTorch attention (CPU) loops over host lists; the Triton kernels read the tensors.
        meta.seq_lens = meta.seq_lens_tensor.tolist()
        meta.query_start_loc = meta.query_start_loc_tensor.tolist()
        return meta


@pytest.mark.parametrize("run_ahead", ["off", "on"])
def test_decode_steps_over_the_device_block_table_return_the_eager_outputs(model_dir, run_ahead):
    """Graph decode plans send only new blocks and rows; positions, slots and block tables are
    derived on the device. Buckets 1-8 make padding rows and larger batches (eager) both happen;
    a preempted, aborted or finished sequence gives its row to the next one."""
    stop_token = _stop_token(model_dir)
    eager, _ = _run(_engine(model_dir, run_ahead), stop_token)
    engine = _engine(model_dir, run_ahead)
    graphs = EagerDecodeGraphs(
        engine.model, engine.kv_pool, engine.limits.max_model_len,
        scratch_block=len(engine.block_manager.blocks), num_table_rows=engine.config.max_num_seqs + 1,
        buckets=(1, 2, 4, 8),
    )  # fmt: skip
    engine.runner.graphs = graphs
    with_table, _ = _run(engine, stop_token)
    _assert_same(eager, with_table)
    assert graphs.num_runs >= 10, "the table path must actually have run"


@pytest.mark.processes  # rank 1 runs in a process of its own
def test_run_ahead_over_tensor_parallel_ranks(model_dir):
    """TP=2 over gloo: the run-ahead step's tokens reach the follower by a broadcast, and the outputs
    are those of the synchronous TP=2 path."""
    from epochserve.worker.config import EngineConfig
    from epochserve.worker.engine.engine import Engine
    from epochserve.worker.tp.launcher import TPLauncher

    stop_token = _stop_token(model_dir)
    results = {}
    for mode in ("off", "on"):
        config = EngineConfig(
            model_dir=model_dir, block_size=4, num_kv_blocks=256, async_scheduling=mode, batch_invariant=True
        )
        launcher = TPLauncher(config, 2, timeout_seconds=60)
        engine = Engine(*launcher.start())
        try:
            results[mode], done = _run(engine, stop_token)
        finally:
            engine.close()
            launcher.stop()
            torch.distributed.destroy_process_group()  # this process was rank 0
        assert launcher.dead_ranks() == [1] and launcher.followers[0].exitcode == 0
        assert (done.num_run_ahead_steps >= 10) == (mode == "on")
    _assert_same(results["off"], results["on"])
