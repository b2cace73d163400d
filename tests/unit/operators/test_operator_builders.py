"""Manifest builders: the fields that make a worker fleet run, asserted on the built objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from crd_schema_testkit import as_stored, example
from kubernetes_validate import utils as kv

from epochserve.operators.builders.cluster import build_cluster
from epochserve.operators.names import SPEC_HASH_ANNOTATION
from epochserve.operators.spec import ClusterSpec, ManagedEtcd, SpecError, parse_cluster

MANAGED = ManagedEtcd(
    "epochserve", ("etcd-0.etcd.epochserve.svc:2379", "etcd-1.etcd.epochserve.svc:2379"), "etcd-client"
)


def _spec(edit: dict[str, Any] | None = None, namespace: str = "epochserve") -> ClusterSpec:
    obj = copy.deepcopy(example("epochcluster.yaml"))
    for key, value in (edit or {}).items():
        obj["spec"][key] = value
    return parse_cluster(as_stored(obj, namespace=namespace), MANAGED)


def _by_kind(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = workload["spec"]["template"]["spec"]["containers"][0]
    return container


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_worker_statefulset_requests_tp_gpus_with_grpc_probes_and_drain():
    objects = build_cluster(_spec())
    sts = _by_kind(objects, "StatefulSet", "demo-worker")
    container = _container(sts)
    assert sts["spec"]["replicas"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": 50051}
    # 1800 s to load weights at one probe every 10 s.
    assert container["startupProbe"]["failureThreshold"] == 180
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 600
    args = container["args"]
    assert args[0] == "worker"
    assert _flag(args, "--tp") == "2" and _flag(args, "--port") == "50051"
    # The session link: a fixed port, declared on the container and the headless Service.
    assert _flag(args, "--session-port") == "50052"
    assert {"name": "session", "containerPort": 50052, "protocol": "TCP"} in container["ports"]
    headless = _by_kind(objects, "Service", "demo-worker")
    assert {p["name"]: p["port"] for p in headless["spec"]["ports"]} == {"grpc": 50051, "session": 50052}
    assert _flag(args, "--model") == "/models/smollm2-135m-instruct"
    assert _flag(args, "--worker-id") == "$(POD_NAME)"
    assert _flag(args, "--etcd-endpoints") == "$(ETCD_ENDPOINTS)"
    assert _flag(args, "--max-num-seqs") == "128"
    assert "--batch-invariant" in args
    assert _flag(args, "--etcd-ca") == "/etc/epochserve/etcd/ca.crt"


def test_worker_env_reads_pod_name_and_the_cluster_configmap():
    objects = build_cluster(_spec())
    env = {e["name"]: e for e in _container(_by_kind(objects, "StatefulSet", "demo-worker"))["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["ETCD_ENDPOINTS"]["valueFrom"]["configMapKeyRef"] == {
        "name": "demo-config",
        "key": "etcd-endpoints",
    }
    config = _by_kind(objects, "ConfigMap", "demo-config")
    assert config["data"]["etcd-endpoints"] == ",".join(MANAGED.endpoints)
    assert config["data"]["cluster"] == "epochserve.demo"


def test_worker_pod_mounts_model_read_only_shm_and_etcd_client_cert():
    pod = _by_kind(build_cluster(_spec()), "StatefulSet", "demo-worker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["etcd-tls"]["secret"]["secretName"] == "etcd-client"
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["model"]["readOnly"] is True and mounts["dshm"]["mountPath"] == "/dev/shm"


def test_uri_model_is_fetched_by_an_init_container_into_an_empty_dir():
    model = {
        "uri": "s3://bucket/llama",
        "fetcher": {"image": "amazon/aws-cli", "command": ["sh", "-c", "sync"]},
    }
    pod = _by_kind(build_cluster(_spec({"model": model})), "StatefulSet", "demo-worker")["spec"]["template"][
        "spec"
    ]
    (init,) = pod["initContainers"]
    assert init["image"] == "amazon/aws-cli" and init["command"] == ["sh", "-c", "sync"]
    assert {"name": "MODEL_URI", "value": "s3://bucket/llama"} in init["env"]
    assert {v["name"]: v for v in pod["volumes"]}["model"]["emptyDir"] == {"sizeLimit": "200Gi"}
    assert _flag(pod["containers"][0]["args"], "--model") == "/models"


def test_every_object_is_owned_by_the_cluster_and_stamped():
    objects = build_cluster(_spec())
    assert {o["kind"] for o in objects} == {
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
        "StatefulSet",
    }
    for obj in objects:
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "epochserve.io/v1alpha1",
            "kind": "EpochCluster",
            "name": "demo",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["namespace"] == "epochserve"
        assert len(obj["metadata"]["annotations"][SPEC_HASH_ANNOTATION]) == 16


def test_router_and_coordinator_deployments():
    objects = build_cluster(_spec())
    router = _by_kind(objects, "Deployment", "demo-router")
    assert router["spec"]["replicas"] == 2
    args = _container(router)["args"]
    assert (
        args[0] == "router" and _flag(args, "--port") == "50050" and _flag(args, "--metrics-port") == "9090"
    )
    assert _container(router)["readinessProbe"]["grpc"] == {"port": 50050}
    assert _flag(args, "--http-port") == "8000"  # the CRD's default: the HTTP front is on
    container_ports = {p["name"]: p["containerPort"] for p in _container(router)["ports"]}
    assert container_ports == {"grpc": 50050, "metrics": 9090, "http": 8000}
    ports = {p["name"]: p["port"] for p in _by_kind(objects, "Service", "demo-router")["spec"]["ports"]}
    assert ports == {"grpc": 50050, "metrics": 9090, "http": 8000}

    coordinator = _by_kind(objects, "Deployment", "demo-coordinator")
    args = _container(coordinator)["args"]
    assert args[0] == "coordinator" and _flag(args, "--admin-port") == "50060"
    assert _flag(args, "--token-file") == "/var/run/epochserve/admin-token"
    token = {v["name"]: v for v in coordinator["spec"]["template"]["spec"]["volumes"]}["admin-token"]
    assert token["secret"]["secretName"] == "epochserve-admin-token"
    assert token["secret"]["items"] == [{"key": "token", "path": "admin-token"}]
    assert _container(coordinator)["livenessProbe"]["grpc"] == {"port": 50060}


@pytest.mark.parametrize(
    ("http_port", "expected"), [(8080, {"grpc", "metrics", "http"}), (0, {"grpc", "metrics"})]
)
def test_router_http_port_from_the_spec_and_0_turns_it_off(http_port, expected):
    objects = build_cluster(_spec({"router": {"replicas": 2, "httpPort": http_port}}))
    router = _container(_by_kind(objects, "Deployment", "demo-router"))
    service = {p["name"]: p for p in _by_kind(objects, "Service", "demo-router")["spec"]["ports"]}
    assert {p["name"] for p in router["ports"]} == set(service) == expected
    if http_port:
        assert _flag(router["args"], "--http-port") == str(http_port)
        assert service["http"] == {"name": "http", "port": http_port, "targetPort": "http", "protocol": "TCP"}
    else:
        assert "--http-port" not in router["args"]


def test_every_component_has_a_pdb_allowing_one_disruption():
    objects = build_cluster(_spec())
    pdbs = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "PodDisruptionBudget"}
    assert set(pdbs) == {"demo-worker", "demo-router", "demo-coordinator"}
    assert pdbs["demo-worker"]["maxUnavailable"] == 1
    assert pdbs["demo-worker"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"


def test_external_etcd_without_tls_has_no_cert_flags():
    spec = _spec({"etcd": {"mode": "External", "endpoints": ["etcd.infra:2379"]}})
    container = _container(_by_kind(build_cluster(spec), "StatefulSet", "demo-worker"))
    assert "--etcd-ca" not in container["args"]
    assert spec.etcd.endpoints == ("etcd.infra:2379",)


def test_admin_token_rename_rolls_coordinators_but_not_workers():
    before, after = build_cluster(_spec()), build_cluster(_spec({"adminTokenSecret": {"name": "other"}}))

    def template(objects, kind, name):
        return _by_kind(objects, kind, name)["spec"]["template"]

    assert template(before, "StatefulSet", "demo-worker") == template(after, "StatefulSet", "demo-worker")
    assert template(before, "Deployment", "demo-coordinator") != template(
        after, "Deployment", "demo-coordinator"
    )


@pytest.mark.parametrize("version", ["1.30.0", kv.latest_version()])
def test_built_objects_validate_strictly_against_kubernetes(version):
    spec = _spec({"model": {"uri": "s3://b/m", "fetcher": {"image": "f", "command": ["c"]}}})
    objects = build_cluster(spec) + build_cluster(_spec())
    for obj in objects:
        assert kv.validate(obj, version, strict=True) == kv.major_minor(version)
    router = _container(_by_kind(objects[: len(objects) // 2], "Deployment", "demo-router"))
    assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in router["ports"]  # validated above


@pytest.mark.parametrize(
    ("edit", "namespace", "needle"),
    [
        (
            {"workers": {"resources": {"limits": {"nvidia.com/gpu": 4}}}},
            "epochserve",
            "must not set nvidia.com/gpu",
        ),
        ({}, "elsewhere", "serves namespace 'epochserve' only"),
        ({"router": {"httpPort": 9090}}, "epochserve", "gRPC or metrics port"),
        ({"router": {"httpPort": 80}}, "epochserve", "below 1024"),
    ],
)
def test_specs_the_operator_refuses(edit, namespace, needle):
    with pytest.raises(SpecError, match=needle):
        _spec(edit, namespace=namespace)


def test_long_names_and_missing_managed_etcd_are_refused():
    obj = as_stored(example("epochcluster.yaml"))
    with pytest.raises(SpecError, match="without a managed etcd"):
        parse_cluster(obj, None)
    obj["metadata"]["name"] = "x" * 41
    with pytest.raises(SpecError, match="limited to 40"):
        parse_cluster(obj, MANAGED)
    del obj["spec"]["workers"]["tp"]
    obj["metadata"]["name"] = "ok"
    with pytest.raises(SpecError, match="missing field 'tp'"):
        parse_cluster(obj, MANAGED)
