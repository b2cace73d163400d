"""`epochctl verify` on a router's audit log: passes on the real log, fails on one whose logprobs were
computed under another version than the one it names."""

import json
import os
import subprocess

import pytest
from fixtures.engine import hf_model
from fixtures.models import build_tiny_model
from fixtures.processes import EPOCHCTL

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.client.generation import GenerationClient
from epochserve.client.publisher import PolicyPublisher
from epochserve.sampling import SamplingParams


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """An audit log with responses under v0 (weights A) and v1 (weights B)."""
    root = tmp_path_factory.mktemp("verify")
    a = build_tiny_model("llama", root / "A", seed=0)
    b = hf_model(build_tiny_model("llama", root / "B-raw", seed=1))
    audit = root / "audit.jsonl"
    spec = LocalClusterSpec(model_dir=a, workdir=root / "cluster", num_workers=1, num_routers=1,
                            worker_args=("--lease-ttl", "2"), router_args=("--audit-log", str(audit)),
                            fast_etcd=True)  # fmt: skip
    with LocalCluster(spec) as cluster, GenerationClient(cluster.router_address) as client:

        def batch(seed):
            for i in range(4):
                asks = i == 0  # support sizes reach a client that asks; the audit log always has them
                params = SamplingParams(
                    temperature=0.9,
                    top_k=50,
                    top_p=0.9,
                    max_tokens=6,
                    seed=seed + i,
                    return_support_size=asks,
                )
                result = client.generate([5, 6, 7 + i, 8], params, n=2)
                for sample in result.samples:
                    assert len(sample.support_sizes) == (len(sample.token_ids) if asks else 0)

        batch(0)
        publisher = PolicyPublisher(cluster.admin_address, cluster.token, timeout=120)
        path = publisher.save_checkpoint(1, b.state_dict(), root / "B", config_from=a)
        publisher.publish_checkpoint(1, path, wait_for="done")
        batch(100)
        admin, token = cluster.admin_address, cluster.token
        cluster.routers[0].stop()  # flushes the audit log
        yield audit, a, path, admin, token


def verify(*args, token=None):
    env = {**os.environ, "EPOCHSERVE_ADMIN_TOKEN": token} if token else None
    return subprocess.run(
        [*EPOCHCTL, "verify", *args, "--json"], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_real_audit_log_passes(audited):
    audit, a, b, _, _ = audited
    done = verify("--audit-log", str(audit), "--model", str(a), "--version-dir", f"1={b}", "--no-admin")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and set(report["by_version"]) == {"0", "1"}
    assert report["overall"]["num_sequences"] == 16 and report["overall"]["max_abs_delta"] < 1e-4
    assert report["num_tokens_without_support_sizes"] == 0
    for line in audit.read_text().splitlines():
        for sample in json.loads(line)["samples"]:
            assert len(sample["support_sizes"]) == len(sample["token_ids"])
            assert all(1 <= size <= 50 for size in sample["support_sizes"])


def test_verify_takes_the_engines_support_and_counts_where_the_rule_departs(audited, tmp_path):
    audit, a, b, _, _ = audited
    planted = tmp_path / "support.jsonl"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    sample = records[0]["samples"][0]
    sample["support_sizes"][0] += 1 if sample["support_sizes"][0] < 50 else -1  # one token more or fewer
    planted.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = verify("--audit-log", str(planted), "--model", str(a), "--version-dir", f"1={b}", "--no-admin")
    report = json.loads(done.stdout)
    assert report["boundary"]["num_positions"] == 1
    # the recompute used the planted support, so it now disagrees with the logprob the engine sent
    assert report["overall"]["max_abs_delta"] > 1e-6


def test_version_sources_come_from_the_coordinator(audited):
    audit, a, _, admin, token = audited
    done = verify("--audit-log", str(audit), "--model", str(a), "--admin", admin, token=token)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_log_computed_under_the_wrong_version_fails(audited, tmp_path):
    audit, a, b, _, _ = audited
    planted = tmp_path / "planted.jsonl"
    lines = []
    for line in audit.read_text().splitlines():
        record = json.loads(line)
        for sample in record["samples"]:  # claim the other version for every response
            sample["policy_version"] = 1 - sample["policy_version"]
        record["policy_version"] = record["samples"][0]["policy_version"]
        lines.append(json.dumps(record))
    planted.write_text("\n".join(lines) + "\n")
    done = verify("--audit-log", str(planted), "--model", str(a), "--version-dir", f"1={b}", "--no-admin")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert not report["ok"] and report["overall"]["max_abs_delta"] > 1e-2
