"""`epochctl verify --engine`: a real cluster re-scores the responses of a router's audit log as prompts
(prompt_logprobs) pinned to their version and agrees with the logprobs it sampled them with; a planted
logprob fails the audit; responses of a version the cluster has moved past are listed, not scored."""

import json
import subprocess

import pytest
from fixtures.engine import hf_model
from fixtures.models import build_tiny_model
from fixtures.processes import EPOCHCTL

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.client.generation import GenerationClient
from epochserve.client.publisher import PolicyPublisher
from epochserve.sampling import SamplingParams

# one request per processing the scoring path must reproduce (greedy: temperature-1 logprobs)
SAMPLINGS = (
    dict(temperature=0.9, top_k=50, top_p=0.9),
    dict(temperature=1.0),
    dict(temperature=0.7, min_p=0.05),
    dict(temperature=0.0),
)
NUM_SAMPLES = len(SAMPLINGS) * 2  # n = 2


def sample_through(router, seed):
    """Send one request per SAMPLINGS through an audited `router`, then stop it to flush its log."""
    with GenerationClient(router.address) as client:
        for i, sampling in enumerate(SAMPLINGS):
            params = SamplingParams(**sampling, max_tokens=6, seed=seed + i, ignore_eos=True)
            client.generate([5, 6, 7 + i, 8, 40 + seed], params, n=2)
    router.stop()


@pytest.fixture(scope="module")
def cluster_and_logs(tmp_path_factory):
    """A cluster that served v0 (logged in old.jsonl), then v1 (logged in new.jsonl); router-0 stays up."""
    root = tmp_path_factory.mktemp("verify_engine")
    a = build_tiny_model("llama", root / "A", seed=0)
    b = hf_model(build_tiny_model("llama", root / "B-raw", seed=1))
    spec = LocalClusterSpec(model_dir=a, workdir=root / "cluster", num_workers=1, num_routers=1,
                            worker_args=("--lease-ttl", "2"), fast_etcd=True)  # fmt: skip
    with LocalCluster(spec) as cluster:
        old, new = root / "old.jsonl", root / "new.jsonl"
        sample_through(cluster.add_router("--audit-log", str(old)), seed=0)
        publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=120)
        path = publisher.save_checkpoint(1, b.state_dict(), root / "B", config_from=a)
        publisher.publish_checkpoint(1, path, wait_for="done")  # every live router observed v1
        sample_through(cluster.add_router("--audit-log", str(new)), seed=100)
        yield cluster.routers[0].address, old, new


def verify(*args):
    return subprocess.run([*EPOCHCTL, "verify", *args, "--json"], capture_output=True, text=True, timeout=300)


def test_the_engine_rescores_what_it_sampled(cluster_and_logs):
    router, _, new = cluster_and_logs
    done = verify("--audit-log", str(new), "--engine", router)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["mode"] == "engine" and report["ok"] and set(report["by_version"]) == {"1"}
    assert (
        report["overall"]["num_sequences"] == NUM_SAMPLES
        and report["overall"]["num_tokens"] == NUM_SAMPLES * 6
    )
    assert report["overall"]["max_abs_delta"] < 1e-4  # CPU fp32: the same numbers, another path
    assert report["retired"] == [] and report["errors"] == []


def test_a_planted_logprob_fails_the_audit(cluster_and_logs, tmp_path):
    router, _, new = cluster_and_logs
    records = [json.loads(line) for line in new.read_text().splitlines()]
    records[1]["samples"][1]["processed_logprobs"][3] -= 0.05
    planted = tmp_path / "planted.jsonl"
    planted.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = verify("--audit-log", str(planted), "--engine", router)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert not report["ok"] and report["overall"]["max_abs_delta"] == pytest.approx(0.05, abs=1e-4)


def test_a_retired_version_is_listed_not_scored(cluster_and_logs):
    router, old, _ = cluster_and_logs
    done = verify("--audit-log", str(old), "--engine", router)
    assert done.returncode == 1, done.stdout + done.stderr  # nothing could be compared
    report = json.loads(done.stdout)
    assert len(report["retired"]) == NUM_SAMPLES and report["overall"]["num_sequences"] == 0


def test_bad_usage_exits_2(cluster_and_logs):
    router, _, new = cluster_and_logs
    replaying = verify("--audit-log", str(new), "--engine", router, "--replay-routing")
    assert replaying.returncode == 2 and "--replay-routing" in replaying.stderr
    no_model = verify("--audit-log", str(new), "--no-admin")
    assert no_model.returncode == 2 and "--model is required" in no_model.stderr
