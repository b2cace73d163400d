"""README's "Five minutes by hand", run as a user runs it: the commands are read from README.md and
started from the repository root through the console scripts, in an environment with nothing of
ours exported (no PYTHONSAFEPATH: the checkout's kernels/ folder must not shadow Hugging Face's
`kernels` package). Each must exit 0 and print what the README says it does; Ctrl-C on `up` then
stops everything.

For speed the cluster serves a tiny random Llama with SmolLM2's tokenizer (so text prompts work)
instead of SmolLM2 itself: `up` and the RL loop get `--model`, the SmolLM2 path the README names is
replaced by the tiny model's, and the load test runs 12 s instead of 60 with a rollout every 5 s.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.models import build_tiny_model
from up_kit import ProcessTracker, user_env, wait_until

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
BIN = Path(sys.executable).parent  # the .venv/bin the README's commands name, wherever it is
SMOLLM2_IN_README = "~/.cache/epochserve/models/smollm2-135m-instruct"
START_TIMEOUT = 300.0  # seconds: two workers loading on a busy 2-core machine
COMMAND_TIMEOUT = 300.0  # the RL loop trains and publishes twice; the load test runs 12 s and drains


def walkthrough() -> list[list[str]]:
    """The section's commands, each as the argv a shell would run (continuations joined, comments
    dropped, `~` left for the caller: the shell would expand it)."""
    section = README.read_text().split("## Five minutes by hand", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in section.split("```")[1::2]:
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


@pytest.fixture()
def tiny_model(smollm2_dir: Path, tmp_path: Path) -> Path:
    """A 2-layer random Llama over SmolLM2's vocabulary, with its tokenizer."""
    model = build_tiny_model("llama", tmp_path / "tiny", vocab_size=49152)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(smollm2_dir / name, model / name)
    return model


def as_run_here(argv: list[str], substitutions: dict[str, str], tiny_model: Path) -> list[str]:
    """The README's argv with this checkout's scripts, this test's files and the tiny model."""
    program, *args = argv
    assert program.startswith(".venv/bin/"), program
    args = [substitutions.get(a, a) for a in args]
    if program == ".venv/bin/python":  # a script of the checkout; its model defaults to SmolLM2
        return [sys.executable, *args, "--model", str(tiny_model)]
    if args[0] == "up":
        args += ["--model", str(tiny_model)]
    if args[0] == "loadtest":
        args[args.index("--duration") + 1] = "12"
        args[args.index("--rollout-every") + 1] = "5"
    return [str(BIN / Path(program).name), *args]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_readme_walkthrough_runs_as_written_from_the_repository_root(tiny_model, tmp_path):
    commands = walkthrough()
    assert [c[1] for c in commands if c[0].endswith("epochctl")] == [
        "up", "generate", "generate", "workers", "rollout", "rollout", "verify", "loadtest",
    ], "the README's walkthrough changed: update this test with it"  # fmt: skip
    ready_file = tmp_path / "up.json"
    substitutions = {
        "/tmp/up.json": str(ready_file),
        "/tmp/rl": str(tmp_path / "rl"),
        "/tmp/load": str(tmp_path / "load"),
        SMOLLM2_IN_README: str(tiny_model),
    }
    env = user_env(tmp_path)
    up_err = tmp_path / "up.stderr"
    with (tmp_path / "up.stdout").open("w") as out, up_err.open("w") as err:
        up = subprocess.Popen(as_run_here(commands[0], substitutions, tiny_model), stdout=out, stderr=err,
                              env=env, cwd=REPO)  # fmt: skip
    tracker = ProcessTracker(up.pid)

    def up_is_ready() -> bool:
        tracker.sample()
        assert up.poll() is None, f"up exited with {up.returncode}:\n{up_err.read_text()}"
        return "Ctrl-C stops everything" in up_err.read_text()

    try:
        wait_until(up_is_ready, START_TIMEOUT, "epochctl up", on_timeout=up_err.read_text)
        endpoints = json.loads((tmp_path / "up.stdout").read_text())  # "it prints its endpoints"
        assert endpoints["routers"] and endpoints["admin"] and Path(endpoints["admin_token_file"]).is_file()
        assert "export EPOCHSERVE_UP=" in up_err.read_text()
        outputs: list[tuple[list[str], str]] = []
        for argv in commands[1:]:
            command = as_run_here(argv, substitutions, tiny_model)
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                                  timeout=COMMAND_TIMEOUT)  # fmt: skip
            assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            outputs.append((argv[1:], done.stdout))
        tracker.sample()
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        code = up.wait(COMMAND_TIMEOUT)
    assert code == 0, up_err.read_text()
    assert tracker.alive() == [] and not ready_file.exists()  # nothing of the cluster is left
    check_outputs(outputs, tmp_path / "load")


def check_outputs(outputs: list[tuple[list[str], str]], load_dir: Path) -> None:
    """What each command printed, against what the README says it does."""

    def printed(*words: str) -> list[str]:
        return [out for args, out in outputs if args[: len(words)] == list(words)]

    text, samples = printed("generate")
    assert "text: " in text and "policy_version=0" in text
    lines = [json.loads(line) for line in samples.splitlines()]
    assert [s["sample_index"] for s in lines] == [0, 1, 2, 3] and {s["seed"] for s in lines} == {7}
    for sample in lines:
        assert 1 <= len(sample["token_ids"]) == len(sample["logprobs"]) <= 32
        assert all(math.isfinite(x) and x <= 0 for x in sample["logprobs"]) and sample["policy_version"] == 0
    (workers,) = printed("workers")
    assert re.search(r"worker-0\s+ready", workers) and re.search(r"worker-1\s+ready", workers)
    # "trains; publishes v1, v2": the engine's logprobs were the trainer's (the demo's 1e-4 bound).
    (rl_loop,) = printed("examples/rl_loop.py")
    assert "step 0:" in rl_loop and "step 1:" in rl_loop
    assert float(rl_loop.rsplit("max |Δ logprob| over 2 steps:", 1)[1]) <= 1e-4
    (listed,) = printed("rollout", "list")
    assert re.search(r"v1\b.*DONE", listed) and re.search(r"v2\b.*DONE", listed), listed
    (status,) = printed("rollout", "status", "2")
    assert "v2 DONE" in status
    (verified,) = printed("verify")
    assert "PASS" in verified
    (load,) = printed("loadtest")
    assert "PASS: 0 violations" in load
    report = json.loads((load_dir / "report.json").read_text())
    assert report["rollouts"] and all(r["outcome"] == "done" for r in report["rollouts"]), report["rollouts"]
