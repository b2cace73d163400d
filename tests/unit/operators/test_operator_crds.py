"""The CRDs in charts/epochserve/crds/: structural, defaulting, and accepting/rejecting CRs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from crd_schema_testkit import admit, apply_defaults, crds, errors, example, openapi_schema

# Keys the API server forbids inside allOf/anyOf/oneOf/not of a structural schema.
_FORBIDDEN_IN_JUNCTORS = {"type", "default", "description", "additionalProperties", "nullable"}


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _junctor_nodes(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(key, []):
            yield branch
            yield from _junctor_nodes(branch)
    if "not" in schema:
        yield schema["not"]
        yield from _junctor_nodes(schema["not"])


@pytest.mark.parametrize("kind", ["EpochCluster", "PolicyRollout"])
def test_schema_is_structural(kind):
    for path, node in _nodes(openapi_schema(kind)):
        untyped_ok = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        assert "type" in node or untyped_ok, f"{kind}{path} has no type"
        assert "$ref" not in node, f"{kind}{path} uses $ref"
        for branch in _junctor_nodes(node):
            if node.get("x-kubernetes-int-or-string"):
                continue  # the one allowed anyOf of types
            forbidden = _FORBIDDEN_IN_JUNCTORS & set(branch)
            assert not forbidden, f"{kind}{path}: {forbidden} inside a junctor"
            for name in branch.get("properties", {}):
                assert name in node.get("properties", {}), f"{kind}{path}: junctor names unknown {name}"


@pytest.mark.parametrize("kind", ["EpochCluster", "PolicyRollout"])
def test_every_default_is_valid_for_its_own_schema(kind):
    defaults = [(p, n) for p, n in _nodes(openapi_schema(kind)) if "default" in n]
    assert defaults, "expected defaulted fields"
    for path, node in defaults:
        value = apply_defaults(node, node["default"])
        problems = [e.message for e in jsonschema.Draft202012Validator(node).iter_errors(value)]
        assert problems == [], f"{kind}{path}: default {node['default']!r} is invalid"


@pytest.mark.parametrize("kind", ["EpochCluster", "PolicyRollout"])
def test_printer_columns_and_scale_paths_exist_in_the_schema(kind):
    version = crds()[kind]["spec"]["versions"][0]
    paths = [c["jsonPath"] for c in version["additionalPrinterColumns"]]
    scale = version["subresources"].get("scale", {})
    paths += [scale[k] for k in ("specReplicasPath", "statusReplicasPath", "labelSelectorPath") if k in scale]
    assert version["subresources"]["status"] == {}
    known = {path for path, _ in _nodes(openapi_schema(kind))}
    for path in paths:
        if path != ".metadata.creationTimestamp":
            assert path in known, f"{kind}: {path} is not in the schema"


def test_example_epochcluster_is_admitted_with_defaults():
    stored = admit(example("epochcluster.yaml"))
    spec = stored["spec"]
    assert spec["workers"]["tp"] == 2 and spec["workers"]["replicas"] == 2
    assert spec["workers"]["gpuResourceName"] == "nvidia.com/gpu"
    assert spec["workers"]["drainSeconds"] == 600
    assert spec["router"]["serviceType"] == "ClusterIP"
    assert spec["adminTokenSecret"]["key"] == "token"
    assert spec["imagePullPolicy"] == "IfNotPresent"


def test_example_policyrollout_is_admitted_with_default_drain():
    rollout = example("policyrollout.yaml")
    del rollout["spec"]["drain"]
    assert admit(rollout)["spec"]["drain"] == "overlap"


def test_minimal_epochcluster_gets_every_component_defaulted():
    minimal = {
        "apiVersion": "epochserve.io/v1alpha1",
        "kind": "EpochCluster",
        "metadata": {"name": "m"},
        "spec": {"image": "img", "model": {"pvc": {"claimName": "c"}}, "adminTokenSecret": {"name": "t"}},
    }
    spec = admit(minimal)["spec"]
    assert spec["workers"]["tp"] == 1 and spec["workers"]["replicas"] == 1
    assert spec["router"]["replicas"] == 2 and spec["coordinator"]["replicas"] == 2
    assert spec["etcd"]["mode"] == "Managed"


_TOKENIZER_UP = {"claimName": "t", "path": "../t"}


def _edit(name: str, *path_and_value: Any, delete: bool = False) -> dict[str, Any]:
    obj = copy.deepcopy(example(name))
    *path, last = path_and_value[:-1] if not delete else path_and_value
    node = obj
    for key in path:
        node = node.setdefault(key, {})
    if delete:
        del node[last]
    else:
        node[last] = path_and_value[-1]
    return obj


@pytest.mark.parametrize(
    ("obj", "needle"),
    [
        (_edit("policyrollout.yaml", "spec", "version", delete=True), "'version' is a required property"),
        (_edit("policyrollout.yaml", "spec", "version", 0), "less than the minimum of 1"),
        (
            _edit("policyrollout.yaml", "spec", "drain", "later"),
            "is not one of ['finish', 'abort', 'overlap']",
        ),
        (_edit("policyrollout.yaml", "spec", "drainDeadlineSeconds", -1), "less than the minimum of 0"),
        (_edit("policyrollout.yaml", "spec", "clusterRef", delete=True), "'clusterRef' is a required"),
        (_edit("epochcluster.yaml", "spec", "workers", "tp", 0), "less than the minimum of 1"),
        (_edit("epochcluster.yaml", "spec", "workers", "replicas", -1), "less than the minimum of 0"),
        (_edit("epochcluster.yaml", "spec", "router", "replicas", -2), "less than the minimum of 1"),
        (_edit("epochcluster.yaml", "spec", "coordinator", "replicas", 0), "less than the minimum of 1"),
        (_edit("epochcluster.yaml", "spec", "model", "uri", "s3://b/m"), "is valid under each of"),
        (_edit("epochcluster.yaml", "spec", "model", {"uri": "s3://b/m"}), "is not valid under any"),
        (_edit("epochcluster.yaml", "spec", "model", "pvc", "path", "../etc"), "does not match"),
        (_edit("epochcluster.yaml", "spec", "etcd", {"mode": "External"}), "is not valid under any"),
        (_edit("epochcluster.yaml", "spec", "etcd", "endpoints", ["e:2379"]), "is not valid under any"),
        (_edit("epochcluster.yaml", "spec", "etcd", "endpoints", ["http://e"]), "does not match"),
        (_edit("epochcluster.yaml", "spec", "image", delete=True), "'image' is a required property"),
        (_edit("epochcluster.yaml", "spec", "workers", "kvCacheMemoryFraction", 1.5), "maximum of 0.99"),
        (
            _edit("epochcluster.yaml", "spec", "router", "tokenizer", {"mode": "Pvc"}),
            "is not valid under any",
        ),
        (
            _edit("epochcluster.yaml", "spec", "router", "tokenizer", {"pvc": {"claimName": "t"}}),
            "is not valid under any",
        ),
        (_edit("epochcluster.yaml", "spec", "router", "tokenizer", {"mode": "Off"}), "is not one of"),
        (
            _edit("epochcluster.yaml", "spec", "router", "tokenizer", {"mode": "Pvc", "pvc": {"path": "t"}}),
            "'claimName' is a required property",
        ),
        (
            _edit("epochcluster.yaml", "spec", "router", "tokenizer", {"mode": "Pvc", "pvc": _TOKENIZER_UP}),
            "does not match",
        ),
        (_edit("epochcluster.yaml", "spec", "router", "modelName", "$(POD_NAME)"), "does not match"),
    ],
    ids=[
        "rollout-missing-version",
        "rollout-version-0",
        "rollout-unknown-drain",
        "rollout-negative-drain-deadline",
        "rollout-missing-cluster",
        "tp-0",
        "negative-worker-replicas",
        "negative-router-replicas",
        "zero-coordinators",
        "pvc-and-uri",
        "uri-without-fetcher",
        "pvc-path-escapes",
        "external-etcd-without-endpoints",
        "managed-etcd-with-endpoints",
        "endpoint-with-scheme",
        "missing-image",
        "kv-fraction-above-1",
        "tokenizer-pvc-mode-without-pvc",
        "tokenizer-pvc-in-model-mode",
        "tokenizer-unknown-mode",
        "tokenizer-pvc-without-claim",
        "tokenizer-path-escapes",
        "model-name-with-a-variable",
    ],
)
def test_invalid_crs_are_rejected(obj, needle):
    found = errors(obj)
    assert found, "the CR was admitted"
    assert any(needle in message for message in found), found


def test_uri_model_with_fetcher_and_external_etcd_are_admitted():
    obj = _edit(
        "epochcluster.yaml",
        "spec",
        "model",
        {"uri": "s3://b/m", "fetcher": {"image": "aws", "command": ["sync"]}},
    )
    obj["spec"]["etcd"] = {"mode": "External", "endpoints": ["etcd-0.etcd:2379"], "tlsSecret": "etcd-tls"}
    assert errors(obj) == []
    assert admit(obj)["spec"]["model"]["sizeLimit"] == "200Gi"


def test_router_tokenizer_defaults_to_the_model_and_takes_a_claim_of_its_own():
    router = admit(example("epochcluster.yaml"))["spec"]["router"]
    assert router["tokenizer"] == {"mode": "Model"} and "modelName" not in router
    obj = _edit(
        "epochcluster.yaml",
        "spec",
        "router",
        {
            "tokenizer": {"mode": "Pvc", "pvc": {"claimName": "tok", "path": "smollm2/v1"}},
            "modelName": "org/m-1.5",
        },
    )
    assert errors(obj) == []
    assert admit(_edit("epochcluster.yaml", "spec", "router", "tokenizer", {"mode": "Disabled"}))


def test_router_http_processes_default_to_one_within_1_to_64():
    assert admit(example("epochcluster.yaml"))["spec"]["router"]["httpProcesses"] == 1
    assert errors(_edit("epochcluster.yaml", "spec", "router", "httpProcesses", 8)) == []
    for bad in (0, 65):
        assert errors(_edit("epochcluster.yaml", "spec", "router", "httpProcesses", bad)), bad
