"""`epochctl generate` end to end against a real SmolLM2 worker process."""

import json
import subprocess

import pytest
from fixtures.engine import hf_greedy, hf_model
from fixtures.processes import EPOCHCTL, running_worker

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smol_worker(smollm2_dir, tmp_path_factory):
    with running_worker(smollm2_dir, tmp_path_factory.mktemp("smol_worker"), name="smol") as server:
        yield server


def epochctl(*args):
    return subprocess.run([*EPOCHCTL, *args], capture_output=True, text=True, timeout=300)


def test_text_prompt_greedy_matches_transformers(smol_worker, smollm2_dir):
    from transformers import AutoTokenizer

    done = epochctl(
        "generate",
        "--target",
        smol_worker.address,
        "--prompt",
        PROMPT,
        "--temperature",
        "0",
        "--max-tokens",
        "12",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    [sample] = [json.loads(line) for line in done.stdout.splitlines()]
    ids = AutoTokenizer.from_pretrained(smollm2_dir).encode(PROMPT, add_special_tokens=False)
    assert sample["token_ids"] == hf_greedy(hf_model(smollm2_dir), ids, 12)
    assert sample["policy_version"] == 0 and sample["finish_reason"] == "length"
    assert "Paris" in sample["text"]
    assert len(sample["logprobs"]) == 12 and all(lp <= 0 for lp in sample["logprobs"])


def test_token_ids_n_samples_and_human_output(smol_worker):
    done = epochctl(
        "generate",
        "--target",
        smol_worker.address,
        "--token-ids",
        "504,3458,314",
        "--n",
        "2",
        "--seed",
        "3",
        "--max-tokens",
        "4",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("policy_version=0") == 2
    assert "sample 1" in done.stdout and "seed=3" in done.stdout


def test_bad_input_exits_non_zero_with_the_reason(smol_worker):
    done = epochctl("generate", "--target", smol_worker.address, "--token-ids", "1,99999999")
    assert done.returncode == 1
    assert "INVALID_ARGUMENT" in done.stderr and "prompt_token_ids" in done.stderr


def test_output_mode_final_prints_what_stream_prints(smol_worker):
    def samples(mode):
        done = epochctl(
            "generate", "--target", smol_worker.address, "--token-ids", "504,3458,314", "--n", "2",
            "--seed", "5", "--max-tokens", "6", "--output-mode", mode, "--json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    stream, final = samples("stream"), samples("final")
    assert [len(s["token_ids"]) for s in final] == [6, 6]
    for s in (*stream, *final):
        del s["request_id"]  # the worker gives each request a fresh one
    assert final == stream
