"""`epochctl` as a newcomer meets it, against a real cluster (etcd, coordinator, a SmolLM2 worker, a
router): no server shares a port that is in use, text comes back through a router, and ordinary
mistakes are one line with the right exit code, with nothing started."""

from __future__ import annotations

import json
import subprocess

import pytest
from fixtures.processes import EPOCHCTL

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec

TIMEOUT = 120  # seconds for one command: a process that loads a model on a busy 2-core machine


@pytest.fixture(scope="module")
def cluster(smollm2_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("newcomer")
    spec = LocalClusterSpec(
        model_dir=smollm2_dir, workdir=workdir, num_workers=1, num_routers=1, fast_etcd=True
    )
    with LocalCluster(spec) as running:
        yield running


def epochctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EPOCHCTL, *args], capture_output=True, text=True, timeout=TIMEOUT, env=env)


def assert_port_refused(done: subprocess.CompletedProcess[str], port: int) -> None:
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and " INFO " not in line]
    assert lines == [f"epochctl {done.args[len(EPOCHCTL)]}: port {port} is in use"], done.stderr


def test_every_server_refuses_a_port_in_use(cluster, smollm2_dir):
    worker, router, coordinator = cluster.workers[0].info, cluster.routers[0].info, cluster.coordinator.info
    etcd = ("--etcd-endpoints", cluster.etcd_endpoint, "--cluster", cluster.spec.cluster)
    model = ("--model", str(smollm2_dir))
    # worker gRPC, then the worker's session link (its gRPC port free)
    assert_port_refused(epochctl("worker", *model, "--port", str(worker["port"])), worker["port"])
    session = worker["session_port"]
    assert_port_refused(epochctl("worker", *model, "--port", "0", "--session-port", str(session)), session)
    # router gRPC, then its metrics endpoint
    assert_port_refused(epochctl("router", *etcd, "--port", str(router["port"])), router["port"])
    metrics = router["metrics_port"]
    assert_port_refused(epochctl("router", *etcd, "--port", "0", "--metrics-port", str(metrics)), metrics)
    # a coordinator's Admin service
    env = {"EPOCHSERVE_ADMIN_TOKEN": cluster.token, "PATH": "/usr/bin:/bin"}
    admin = coordinator["port"]
    assert_port_refused(epochctl("coordinator", *etcd, "--admin-port", str(admin), env=env), admin)
    # and the first servers still serve
    done = epochctl(
        "generate", "--target", cluster.router_address, "--token-ids", "1,2,3", "--max-tokens", "2"
    )
    assert done.returncode == 0, done.stderr


def test_generate_through_a_router_prints_the_text(cluster, smollm2_dir):
    from transformers import AutoTokenizer

    args = ("generate", "--target", cluster.router_address, "--prompt", "The capital of France is")
    done = epochctl(*args, "--temperature", "0", "--max-tokens", "6", "--json")
    assert done.returncode == 0, done.stderr
    [sample] = [json.loads(line) for line in done.stdout.splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    assert sample["text"] == tokenizer.decode(sample["token_ids"]) and sample["text"].strip()
    assert "seed" not in sample  # greedy: nothing was drawn
    text = epochctl(*args, "--max-tokens", "3", "--seed", "5", "--raw-logprobs", "--top-logprobs", "2")
    assert text.returncode == 0, text.stderr
    assert "text: " in text.stdout and "seed=5" in text.stdout
    assert "logprob(raw)" in text.stdout and "top" in text.stdout.splitlines()[2]
    rows = text.stdout.splitlines()[3:]
    assert len(rows) == 3 and all(len(row.split()) == 3 + 2 for row in rows)  # id, processed, raw, 2 top


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("up", "--model", "/nonexistent"), "epochctl up: --model /nonexistent: no such directory"),
        (("worker", "--model", "/tmp"), "epochctl worker: --model /tmp: no config.json there"),
        (("generate", "--token-ids", "1,a,3"), "epochctl generate: --token-ids: 'a' is not a token id"),
    ],
)
def test_an_ordinary_mistake_is_one_line_and_exit_code_2_with_nothing_started(args, message, tmp_path):
    done = subprocess.run([*EPOCHCTL, *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(message), done.stderr
    assert list(tmp_path.iterdir()) == []  # no workdir, etcd data or log was made


def test_loadtest_of_a_dead_address_fails_at_once(tmp_path):
    done = epochctl("loadtest", "--target", "127.0.0.1:9", "--concurrency", "1", "--duration", "5",
                    "--out", str(tmp_path / "report"))  # fmt: skip
    assert done.returncode == 1 and "does not answer GetPolicy" in done.stderr
    # Refused at once (UNAVAILABLE), not after waiting 30 s for a channel to become ready (which
    # ended as DEADLINE_EXCEEDED): no timing needed to tell the two apart.
    assert "UNAVAILABLE" in done.stderr and "DEADLINE_EXCEEDED" not in done.stderr
