"""Tensor parallelism on CPU (gloo): a TP=N worker process answers exactly like a TP=1 engine."""

import os
import signal
import subprocess
import time

import grpc
import pytest
import torch
from fixtures.engine import make_engine, make_request, run_to_completion
from fixtures.grpc_client import generate
from fixtures.processes import EPOCHCTL, running_worker

from epochserve.proto.v1 import common_pb2, worker_pb2_grpc


def prompts(vocab_size: int, lengths=(1, 7, 16, 23)) -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def assert_same_as_tp1(model_dir, tp: int, workdir, lengths=(1, 7, 16, 23), max_tokens=10):
    reference = make_engine(model_dir, block_size=16)
    batch = prompts(reference.model_config.vocab_size, lengths)
    cases = [dict(temperature=0.0), dict(temperature=0.9, top_p=0.9, seed=11)]
    requests = [
        make_request(f"{c}-{i}", p, reference.limits, max_tokens=max_tokens, ignore_eos=True, **case)
        for c, case in enumerate(cases)
        for i, p in enumerate(batch)
    ]
    expected = run_to_completion(reference, requests)
    with running_worker(model_dir, workdir, "--tp", str(tp), "--block-size", "16", name=f"tp{tp}") as worker:
        for c, case in enumerate(cases):
            for i, prompt in enumerate(batch):
                [got] = generate(
                    worker.address, prompt, max_tokens=max_tokens, ignore_eos=True, **case
                ).values()
                want = expected[f"{c}-{i}"][0]
                assert got.token_ids == want.token_ids, (tp, case, i)
                assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4), (tp, case, i)
                assert got.finish.diagnostics.tp_size == tp


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
def test_tp2_matches_tp1(kind, tiny_model_dirs, tmp_path):
    assert_same_as_tp1(tiny_model_dirs[kind], 2, tmp_path)


@pytest.mark.parametrize("kind", ["qwen3_moe", "qwen2_moe"])
def test_tp2_moe_matches_tp1(kind, tiny_moe_dirs, tmp_path):
    # each rank holds half of every expert's width (and of the shared expert's)
    assert_same_as_tp1(tiny_moe_dirs[kind], 2, tmp_path)


def test_tp4_replicates_two_kv_heads(tiny_model_dirs, tmp_path):
    # The tiny Llama has 4 query heads and 2 kv heads: at TP=4 each kv head lives on two ranks.
    assert_same_as_tp1(tiny_model_dirs["llama"], 4, tmp_path)


def test_smollm2_at_tp3(smollm2_dir, tmp_path):
    # 9 query heads, 3 kv heads: three ranks of 3 + 1.
    assert_same_as_tp1(smollm2_dir, 3, tmp_path, lengths=(5, 20), max_tokens=6)


def test_head_counts_that_do_not_divide_are_refused_at_start(tiny_model_dirs, tmp_path):
    done = subprocess.run(
        [*EPOCHCTL, "worker", "--model", str(tiny_model_dirs["llama"]), "--port", "0", "--tp", "3"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "4 attention heads cannot be split over TP size 3" in done.stderr


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes: it runs nothing and holds no GPU.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def wait_dead(pids, timeout=60.0):
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if pid_alive(p)]}"
        time.sleep(0.1)


def test_killing_a_follower_takes_the_worker_down(tiny_model_dirs, tmp_path):
    args = ("--tp", "2", "--collective-timeout", "30")
    with running_worker(tiny_model_dirs["llama"], tmp_path, *args, name="tp-kill") as worker:
        [follower] = worker.info["tp_follower_pids"]
        request = common_pb2.GenerateRequest(
            request_id="long",
            prompt_token_ids=[5, 6, 7],
            sampling=common_pb2.SamplingParams(max_tokens=400, ignore_eos=True),
        )
        with grpc.insecure_channel(worker.address) as channel:
            stream = worker_pb2_grpc.WorkerStub(channel).Generate(request, timeout=120)
            assert next(stream).HasField("chunk")
            os.kill(follower, signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as error:
                for _ in stream:
                    pass
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert worker.process.wait(60) != 0
    wait_dead([follower, worker.process.pid])


def test_killing_rank0_leaves_no_orphans(tiny_model_dirs, tmp_path):
    with running_worker(tiny_model_dirs["llama"], tmp_path, "--tp", "4", name="tp-kill0") as worker:
        followers = worker.info["tp_follower_pids"]
        assert len(followers) == 3
        worker.process.kill()
        worker.process.wait(30)
        wait_dead(followers)
