"""The routers' HTTP front on Kubernetes: the tokenizer from the model source (or its override) and
the Admin address and token, as built by the operator and as the real `epochctl router` reads them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from crd_schema_testkit import as_stored, example
from kubernetes_validate import utils as kv
from pod_files_testkit import claim_dir, container_args

from epochserve.app.cli.main import build_parser
from epochserve.app.cli.router_cmd import build_config
from epochserve.operators.builders.cluster import build_cluster
from epochserve.operators.spec import ManagedEtcd, parse_cluster

MANAGED = ManagedEtcd("epochserve", ("etcd-0.etcd.epochserve.svc:2379",), "etcd-client")
URI_MODEL = {"uri": "s3://bucket/smollm2", "fetcher": {"image": "amazon/aws-cli", "command": ["sync"]}}
TOKENIZER_PVC = {"mode": "Pvc", "pvc": {"claimName": "tokenizers", "path": "smollm2/v1"}}
ADMIN_ADDRESS = "demo-coordinator.epochserve.svc:50060"
TOKEN_FILE = "/var/run/epochserve/admin-token"


def _objects(router: dict[str, Any] | None = None, **spec_edits: Any) -> list[dict[str, Any]]:
    obj = copy.deepcopy(example("epochcluster.yaml"))
    obj["spec"]["router"].update(router or {})
    obj["spec"].update(spec_edits)
    return build_cluster(parse_cluster(as_stored(obj), MANAGED))


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _router_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = _find(objects, "Deployment", "demo-router")["spec"]["template"]["spec"]
    return pod


def _flag(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def _volumes_and_mounts(pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    mounts = {m["name"]: m for m in pod["containers"][0].get("volumeMounts", [])}
    return {v["name"]: v for v in pod.get("volumes", [])}, mounts


def test_pvc_model_is_the_routers_tokenizer_read_only_with_the_admin_token_beside_it():
    pod = _router_pod(_objects())
    args = pod["containers"][0]["args"]
    volumes, mounts = _volumes_and_mounts(pod)
    # The workers' claim, read-only, and the directory the workers load (/models/<path> there).
    assert volumes["tokenizer"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert mounts["tokenizer"] == {"name": "tokenizer", "mountPath": "/tokenizer", "readOnly": True}
    assert _flag(args, "--tokenizer") == "/tokenizer/smollm2-135m-instruct"
    assert _flag(args, "--model-name") == "demo"  # the EpochCluster's name unless modelName is set
    # The coordinator Service's Admin port and the cluster's Admin token Secret, as a file.
    assert _flag(args, "--admin-address") == ADMIN_ADDRESS
    assert _flag(args, "--admin-token-file") == TOKEN_FILE
    assert volumes["admin-token"]["secret"]["secretName"] == "epochserve-admin-token"
    assert volumes["admin-token"]["secret"]["items"] == [{"key": "token", "path": "admin-token"}]
    assert mounts["admin-token"]["mountPath"] == "/var/run/epochserve" and mounts["admin-token"]["readOnly"]
    assert "initContainers" not in pod


def test_uri_model_is_fetched_for_the_router_with_the_tokenizer_only_hint():
    objects = _objects(model=URI_MODEL)
    pod = _router_pod(objects)
    (fetch,) = pod["initContainers"]
    env = {e["name"]: e["value"] for e in fetch["env"]}
    assert env == {"MODEL_URI": "s3://bucket/smollm2", "MODEL_DIR": "/tokenizer", "MODEL_TOKENIZER_ONLY": "1"}
    assert fetch["image"] == "amazon/aws-cli" and fetch["command"] == ["sync"]
    assert fetch["volumeMounts"] == [{"name": "tokenizer", "mountPath": "/tokenizer"}]  # it writes there
    volumes, mounts = _volumes_and_mounts(pod)
    assert volumes["tokenizer"]["emptyDir"] == {"sizeLimit": "200Gi"}
    assert mounts["tokenizer"]["readOnly"] is True  # the router only reads what the fetcher wrote
    assert _flag(pod["containers"][0]["args"], "--tokenizer") == "/tokenizer"
    # The workers' fetcher copies the whole checkpoint: no hint there.
    worker = _find(objects, "StatefulSet", "demo-worker")["spec"]["template"]["spec"]
    assert "MODEL_TOKENIZER_ONLY" not in {e["name"] for e in worker["initContainers"][0]["env"]}


def test_tokenizer_override_on_its_own_claim_and_disabled():
    pod = _router_pod(_objects({"tokenizer": TOKENIZER_PVC, "modelName": "org/smollm2"}))
    args = pod["containers"][0]["args"]
    volumes, _ = _volumes_and_mounts(pod)
    assert volumes["tokenizer"]["persistentVolumeClaim"] == {"claimName": "tokenizers", "readOnly": True}
    assert _flag(args, "--tokenizer") == "/tokenizer/smollm2/v1"
    assert _flag(args, "--model-name") == "org/smollm2"

    disabled = _router_pod(_objects({"tokenizer": {"mode": "Disabled"}}))
    args = disabled["containers"][0]["args"]
    volumes, mounts = _volumes_and_mounts(disabled)
    assert "--tokenizer" not in args and "tokenizer" not in volumes and "tokenizer" not in mounts
    assert _flag(args, "--admin-address") == ADMIN_ADDRESS  # rollouts through HTTP need no tokenizer


def test_without_the_http_front_routers_mount_neither_tokenizer_nor_admin_token():
    pod = _router_pod(_objects({"httpPort": 0}))
    args = pod["containers"][0]["args"]
    volumes, _ = _volumes_and_mounts(pod)
    for flag in ("--http-port", "--tokenizer", "--admin-address", "--admin-token-file", "--model-name"):
        assert flag not in args
    assert set(volumes) == {"etcd-tls"}


def test_router_tokenizer_settings_never_touch_the_gpu_workers():
    variants = [
        _objects(),
        _objects({"tokenizer": TOKENIZER_PVC}),
        _objects({"tokenizer": {"mode": "Disabled"}}),
    ]
    workers = [_find(objects, "StatefulSet", "demo-worker") for objects in variants]
    assert workers[0] == workers[1] == workers[2]  # same spec digest: no worker pod is rolled
    routers = [_find(objects, "Deployment", "demo-router")["spec"]["template"] for objects in variants]
    assert routers[0] != routers[1] != routers[2]


def test_admin_token_rename_rolls_routers_only_while_they_serve_http():
    def router_template(router: dict[str, Any], secret: str) -> dict[str, Any]:
        objects = _objects(router, adminTokenSecret={"name": secret})
        template: dict[str, Any] = _find(objects, "Deployment", "demo-router")["spec"]["template"]
        return template

    assert router_template({}, "a") != router_template({}, "b")
    assert router_template({"httpPort": 0}, "a") == router_template({"httpPort": 0}, "b")


@pytest.mark.parametrize(
    ("router", "spec_edits"),
    [({}, {}), ({}, {"model": URI_MODEL}), ({"tokenizer": TOKENIZER_PVC}, {}), ({"httpPort": 0}, {})],
    ids=["pvc-model", "uri-model", "tokenizer-pvc", "no-http-front"],
)
@pytest.mark.parametrize("version", ["1.30.0", kv.latest_version()])
def test_router_objects_validate_strictly_against_kubernetes(router, spec_edits, version):
    for obj in _objects(router, **spec_edits):
        assert kv.validate(obj, version, strict=True) == kv.major_minor(version)


def _run_router_args(objects: list[dict[str, Any]], root: Path) -> Any:
    """RouterConfig that `epochctl router` builds from the pod's args, its files laid out in `root`."""
    pod = _router_pod(objects)
    secrets = {
        "epochserve-admin-token": {"token": "s3cret-admin-token\n"},
        "etcd-client": {"ca.crt": "ca", "tls.crt": "cert", "tls.key": "key"},
    }
    env = {"ETCD_ENDPOINTS": "127.0.0.1:2379", "EPOCHSERVE_CLUSTER": "epochserve.demo"}
    args = container_args(pod, pod["containers"][0], root, secrets, env)
    return build_config(build_parser().parse_args(args))


def test_the_real_router_cli_reads_the_mounted_tokenizer_and_admin_token(tmp_path):
    model = claim_dir(tmp_path, "models") / "smollm2-135m-instruct"
    model.mkdir(parents=True)
    config = _run_router_args(_objects(), tmp_path)
    assert config.http_port == 8000 and config.served_model_name == "demo"
    assert config.tokenizer == model
    assert config.admin_address == ADMIN_ADDRESS
    assert config.admin_token() == "s3cret-admin-token"


def test_the_real_router_cli_reads_an_overridden_fetched_or_no_tokenizer(tmp_path):
    tokenizer = claim_dir(tmp_path / "pvc", "tokenizers") / "smollm2" / "v1"
    tokenizer.mkdir(parents=True)
    config = _run_router_args(_objects({"tokenizer": TOKENIZER_PVC}), tmp_path / "pvc")
    assert config.tokenizer == tokenizer and config.admin_token() == "s3cret-admin-token"

    config = _run_router_args(_objects(model=URI_MODEL), tmp_path / "uri")
    assert config.tokenizer == tmp_path / "uri" / "volumes" / "tokenizer"  # the fetcher's emptyDir

    config = _run_router_args(_objects({"httpPort": 0}), tmp_path / "off")
    assert config.http_port is None and config.tokenizer is None and config.admin_token() is None


def test_http_processes_reach_the_real_router_cli(tmp_path):
    for root in (tmp_path / "one", tmp_path / "four"):
        (claim_dir(root, "models") / "smollm2-135m-instruct").mkdir(parents=True)
    assert _run_router_args(_objects(), tmp_path / "one").http_processes == 1
    assert "--http-processes" not in _router_pod(_objects())["containers"][0]["args"]
    config = _run_router_args(_objects({"httpProcesses": 4}), tmp_path / "four")
    assert config.http_processes == 4 and config.http_port == 8000
