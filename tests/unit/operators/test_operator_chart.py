"""charts/epochserve with a real Helm v4: lint, render, and kubernetes-validate --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from crd_schema_testkit import admit, crds
from kubernetes_validate import utils as kv

from epochserve.operators.builders.cluster import build_cluster
from epochserve.operators.spec import ManagedEtcd, parse_cluster

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "epochserve"
PRODUCTION = CHART / "values-production-gpu.yaml"
OUR_KINDS = {"EpochCluster", "PolicyRollout"}
VERSIONS = ["1.30.0", kv.latest_version()]
VALUE_SETS = {"default": [], "production-gpu": ["-f", str(PRODUCTION)]}


def _render(helm: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(helm),
        "template",
        "epochserve",
        str(CHART),
        "--namespace",
        "epochserve",
        "--include-crds",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def _docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _kubernetes_validate(text: str, version: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, "-"]
    return subprocess.run(cmd, input=text, capture_output=True, text=True)


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request, helm) -> tuple[str, str]:
    return request.param, _render(helm, *VALUE_SETS[request.param]).stdout


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_lint_strict(helm, values):
    result = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART), *VALUE_SETS[values]], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_chart_passes_kubernetes_validate_strict(rendered, version):
    name, text = rendered
    docs = _docs(text)
    result = _kubernetes_validate(text, version)
    assert result.returncode == 0, f"values {name}: {result.stdout}{result.stderr}"
    passed = [line for line in result.stdout.splitlines() if line.startswith("INFO") and " passed " in line]
    builtin = [d for d in docs if d["kind"] not in OUR_KINDS]
    assert len(passed) == len(builtin), result.stdout
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARN")]
    assert all(any(kind in line for kind in OUR_KINDS) for line in warnings), warnings
    assert {d["kind"] for d in docs} >= {
        "CustomResourceDefinition",
        "Deployment",
        "StatefulSet",
        "ClusterRole",
    }


def test_kubernetes_validate_catches_a_bad_field(helm):
    """Control: the pipeline above would fail on a manifest Kubernetes rejects."""
    docs = _docs(_render(helm).stdout)
    deployment = _find(docs, "Deployment", "epochserve-operator")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    result = _kubernetes_validate(yaml.safe_dump(deployment), VERSIONS[0])
    assert result.returncode != 0 and "imagePullPolice" in result.stdout


def test_chart_installs_exactly_the_crd_files_the_tests_load(helm):
    docs = _docs(_render(helm).stdout)
    rendered = {d["spec"]["names"]["kind"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert rendered == crds()


def test_rendered_epochcluster_is_admitted_and_builds(helm):
    docs = _docs(_render(helm, "-f", str(PRODUCTION)).stdout)
    (cluster,) = [d for d in docs if d["kind"] == "EpochCluster"]
    stored = admit(cluster)
    assert stored["spec"]["image"] == "ghcr.io/epochserve/epochserve:0.1.0"
    assert stored["spec"]["adminTokenSecret"] == {"name": "epochserve-admin-token", "key": "token"}
    stored["metadata"].update(uid="u", generation=1)
    operator = _find(docs, "Deployment", "epochserve-operator")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    managed = ManagedEtcd(
        "epochserve",
        tuple(env["EPOCHSERVE_MANAGED_ETCD_ENDPOINTS"].split(",")),
        env["EPOCHSERVE_MANAGED_ETCD_TLS_SECRET"],
    )
    objects = build_cluster(parse_cluster(stored, managed))
    workers = [o for o in objects if o["kind"] == "StatefulSet"]
    limits = workers[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    # router.httpPort (values) merged into the given router spec: the HTTP front on 8000.
    assert stored["spec"]["router"]["httpPort"] == 8000 and stored["spec"]["router"]["replicas"] == 3
    (service,) = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "policy-70b-router"
    ]
    assert {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"} in service["spec"]["ports"]


def _built_from_chart(helm: Path, *args: str) -> list[dict[str, Any]]:
    """The objects the operator builds for the EpochCluster the chart renders with `args`."""
    docs = _docs(_render(helm, "-f", str(PRODUCTION), *args).stdout)
    (cluster,) = [d for d in docs if d["kind"] == "EpochCluster"]
    stored = admit(cluster)
    stored["metadata"].update(uid="u", generation=1)
    return build_cluster(parse_cluster(stored, ManagedEtcd("epochserve", ("etcd:2379",), None)))


@pytest.mark.parametrize("version", VERSIONS)
def test_chart_cluster_routers_read_the_model_tokenizer_and_the_charts_admin_token(helm, version):
    objects = _built_from_chart(helm)
    router = _find(objects, "Deployment", "policy-70b-router")
    pod = router["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The workers' checkpoint claim (values-production-gpu.yaml), read-only, at the workers' path.
    assert volumes["tokenizer"]["persistentVolumeClaim"] == {
        "claimName": "policy-checkpoints",
        "readOnly": True,
    }
    assert args[args.index("--tokenizer") + 1] == "/tokenizer/llama-3.1-70b/step-0"
    assert args[args.index("--model-name") + 1] == "policy-70b"
    # The Secret the chart generates (templates/admin-token-secret.yaml) and the coordinator Service.
    assert volumes["admin-token"]["secret"]["secretName"] == "epochserve-admin-token"
    assert args[args.index("--admin-address") + 1] == "policy-70b-coordinator.epochserve.svc:50060"
    assert args[args.index("--admin-token-file") + 1] == "/var/run/epochserve/admin-token"
    for obj in objects:
        assert kv.validate(obj, version, strict=True) == kv.major_minor(version)


def test_chart_cluster_tokenizer_override_and_http_off(helm):
    args = ["--set", "cluster.spec.router.tokenizer.mode=Pvc"]
    args += ["--set", "cluster.spec.router.tokenizer.pvc.claimName=tokenizers"]
    args += ["--set", "cluster.spec.router.modelName=llama-70b"]
    pod = _find(_built_from_chart(helm, *args), "Deployment", "policy-70b-router")["spec"]["template"]["spec"]
    container_args = pod["containers"][0]["args"]
    assert container_args[container_args.index("--tokenizer") + 1] == "/tokenizer"  # the claim's root
    assert container_args[container_args.index("--model-name") + 1] == "llama-70b"
    assert {v["name"]: v for v in pod["volumes"]}["tokenizer"]["persistentVolumeClaim"][
        "claimName"
    ] == "tokenizers"

    off = _find(_built_from_chart(helm, "--set", "router.httpPort=0"), "Deployment", "policy-70b-router")
    assert "--tokenizer" not in off["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "volumes" not in off["spec"]["template"]["spec"]  # no etcd TLS here, no token, no model


@pytest.mark.parametrize("http_port", [8080, 0])
def test_router_http_port_value_reaches_the_epochcluster(helm, http_port):
    args = ["-f", str(PRODUCTION), "--set", f"router.httpPort={http_port}"]
    (cluster,) = [d for d in _docs(_render(helm, *args).stdout) if d["kind"] == "EpochCluster"]
    assert admit(cluster)["spec"]["router"]["httpPort"] == http_port


def test_router_http_processes_value_reaches_the_router_pods(helm):
    """router.httpProcesses (values) becomes the EpochCluster's and, through the operator, the
    router container's `--http-processes`; a cluster.spec value wins; 0 is refused at render."""
    default = _find(_built_from_chart(helm), "Deployment", "policy-70b-router")
    assert "--http-processes" not in default["spec"]["template"]["spec"]["containers"][0]["args"]
    four = _find(
        _built_from_chart(helm, "--set", "router.httpProcesses=4"), "Deployment", "policy-70b-router"
    )
    args = four["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--http-processes") + 1] == "4"
    spec_wins = ["--set", "router.httpProcesses=4", "--set", "cluster.spec.router.httpProcesses=2"]
    args = _find(_built_from_chart(helm, *spec_wins), "Deployment", "policy-70b-router")["spec"]["template"][
        "spec"
    ]["containers"][0]["args"]
    assert args[args.index("--http-processes") + 1] == "2"
    refused = _render(helm, "-f", str(PRODUCTION), "--set", "router.httpProcesses=0", check=False)
    assert refused.returncode != 0 and "httpProcesses" in refused.stderr


def test_operator_env_points_at_every_managed_etcd_member_over_tls(helm):
    docs = _docs(_render(helm).stdout)
    operator = _find(docs, "Deployment", "epochserve-operator")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EPOCHSERVE_MANAGED_ETCD_ENDPOINTS"] == ",".join(
        f"epochserve-etcd-{i}.epochserve-etcd.epochserve.svc:2379" for i in range(3)
    )
    assert env["EPOCHSERVE_MANAGED_ETCD_TLS_SECRET"] == "epochserve-etcd-client-tls"
    etcd = _find(docs, "StatefulSet", "epochserve-etcd")
    assert etcd["spec"]["replicas"] == 3
    args = etcd["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--client-cert-auth" in args and "--peer-client-cert-auth" in args
    initial = next(a for a in args if a.startswith("--initial-cluster="))
    assert initial.count("https://") == 3
    assert etcd["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "8Gi"
    for name in ("epochserve-etcd-server-tls", "epochserve-etcd-client-tls"):
        assert set(_find(docs, "Secret", name)["data"]) == {"ca.crt", "tls.crt", "tls.key"}


def test_rbac_is_least_privilege(helm):
    docs = _docs(_render(helm).stdout)
    rules = _find(docs, "ClusterRole", "epochserve-operator")["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "update" not in rule["verbs"], rule  # writes are server-side apply (patch)
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets] == [["get"]]
    discovery = _find(docs, "ClusterRole", "epochserve-operator-discovery")["rules"]
    assert all(set(r["verbs"]) == {"list", "watch"} for r in discovery)


def test_watch_namespaces_gives_roles_instead_of_a_cluster_role(helm):
    docs = _docs(_render(helm, "--set", "operator.watchNamespaces={team-a,team-b}").stdout)
    assert not [
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "epochserve-operator"
    ]
    roles = sorted(d["metadata"]["namespace"] for d in docs if d["kind"] == "Role")
    assert roles == ["team-a", "team-b"]
    args = _find(docs, "Deployment", "epochserve-operator")["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_external_etcd_runs_no_etcd_and_hands_its_endpoints_to_the_operator(helm):
    args = ["--set", "etcd.enabled=false", "--set", "etcd.external.endpoints={etcd.infra:2379}"]
    args += ["--set", "etcd.external.tlsSecret=etcd-client"]
    docs = _docs(_render(helm, *args).stdout)
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    operator = _find(docs, "Deployment", "epochserve-operator")
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["EPOCHSERVE_MANAGED_ETCD_ENDPOINTS"] == "etcd.infra:2379"
    assert env["EPOCHSERVE_MANAGED_ETCD_TLS_SECRET"] == "etcd-client"


@pytest.mark.parametrize(
    "bad",
    [
        ["--set", "etcd.replicas=2"],
        ["--set", "etcd.enabled=false"],
        ["--set", "operator.unknown=1"],
        ["--set", "router.httpPort=70000"],
    ],
    ids=["even-etcd-members", "no-etcd-at-all", "unknown-value", "http-port-out-of-range"],
)
def test_values_schema_rejects_bad_values(helm, bad):
    result = _render(helm, *bad, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
