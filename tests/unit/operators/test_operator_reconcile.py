"""Level-based reconcile against an in-memory API server: idempotent, minimal, owner-safe."""

from __future__ import annotations

import copy
from typing import Any

from crd_schema_testkit import as_stored, example
from memory_store_testkit import InMemoryObjectStore

from epochserve.operators.builders.cluster import build_cluster
from epochserve.operators.cluster_status import cluster_status
from epochserve.operators.names import owned_labels
from epochserve.operators.reconcile import ObjectKey, Verb, plan, reconcile
from epochserve.operators.spec import ClusterSpec, ManagedEtcd, parse_cluster

MANAGED = ManagedEtcd("epochserve", ("etcd-0.etcd.epochserve.svc:2379",), None)


def _spec(**workers: Any) -> ClusterSpec:
    obj = copy.deepcopy(example("epochcluster.yaml"))
    obj["spec"]["workers"].update(workers)
    return parse_cluster(as_stored(obj), MANAGED)


def _reconcile(store: InMemoryObjectStore, spec: ClusterSpec):
    actions, _ = reconcile(store, build_cluster(spec), spec.namespace, owned_labels(spec.name), spec.uid)
    return actions


def _versions(store: InMemoryObjectStore) -> dict[ObjectKey, str]:
    return {key: obj["metadata"]["resourceVersion"] for key, obj in store.objects.items()}


def test_first_reconcile_creates_every_object_in_order():
    store = InMemoryObjectStore()
    actions = _reconcile(store, _spec())
    assert [a.verb for a in actions] == [Verb.CREATE] * 10
    assert [a.key.kind for a in actions][:1] == ["ConfigMap"]
    assert [a.key.kind for a in actions][-1] == "StatefulSet"
    assert len(store.objects) == 10


def test_reconciling_twice_changes_nothing():
    store = InMemoryObjectStore()
    _reconcile(store, _spec())
    before, writes = _versions(store), len(store.writes)
    assert _reconcile(store, _spec()) == []
    assert _versions(store) == before
    assert len(store.writes) == writes


def test_changed_replica_count_updates_only_the_statefulset():
    store = InMemoryObjectStore()
    _reconcile(store, _spec())
    before = _versions(store)
    actions = _reconcile(store, _spec(replicas=5))
    assert [(a.verb, a.key.kind, a.key.name) for a in actions] == [
        (Verb.UPDATE, "StatefulSet", "demo-worker")
    ]
    changed = {key for key, version in _versions(store).items() if before[key] != version}
    assert changed == {actions[0].key}
    assert store.objects[actions[0].key]["spec"]["replicas"] == 5


def test_changed_tp_updates_the_statefulset_gpu_request():
    store = InMemoryObjectStore()
    _reconcile(store, _spec())
    (action,) = _reconcile(store, _spec(tp=4))
    container = store.objects[action.key]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"


def test_stale_owned_objects_are_deleted_and_foreign_ones_kept():
    store = InMemoryObjectStore()
    spec = _spec()
    _reconcile(store, spec)
    stale = copy.deepcopy(store.objects[ObjectKey("v1", "Service", "epochserve", "demo-router")])
    stale["metadata"]["name"] = "demo-old"
    store.put_foreign(stale)
    foreign = copy.deepcopy(stale)
    foreign["metadata"]["name"] = "someone-elses"
    foreign["metadata"]["ownerReferences"] = [{"uid": "other", "controller": True}]
    store.put_foreign(foreign)
    actions = _reconcile(store, spec)
    assert [(a.verb, a.key.name) for a in actions] == [(Verb.DELETE, "demo-old")]
    assert ObjectKey("v1", "Service", "epochserve", "someone-elses") in store.objects


def test_plan_updates_an_object_edited_behind_our_back():
    spec = _spec()
    desired = build_cluster(spec)
    existing = copy.deepcopy(desired)
    existing[0]["metadata"]["annotations"] = {}  # e.g. replaced by kubectl
    (action,) = plan(desired, existing, spec.uid)
    assert action.verb is Verb.UPDATE and action.key.kind == "ConfigMap"


def _with_workload_status(store: InMemoryObjectStore, ready: dict[str, int]) -> list[dict[str, Any]]:
    objects = store.list_owned("epochserve", owned_labels("demo"))
    for obj in objects:
        name = obj["metadata"]["name"].removeprefix("demo-")
        if obj["kind"] in ("StatefulSet", "Deployment"):
            replicas = obj["spec"]["replicas"]
            obj["status"] = {
                "observedGeneration": obj["metadata"]["generation"],
                "replicas": replicas,
                "updatedReplicas": replicas,
                "readyReplicas": ready[name],
            }
    return objects


def test_cluster_status_phases_follow_the_workloads():
    store = InMemoryObjectStore()
    spec = _spec()
    assert cluster_status(spec, 1, [], False, [], "t0")["phase"] == "Pending"
    assert cluster_status(spec, 1, [], True, [], "t0")["phase"] == "Progressing"
    _reconcile(store, spec)
    ready = _with_workload_status(store, {"worker": 2, "router": 2, "coordinator": 2})
    status = cluster_status(spec, 3, ready, False, [], "t1")
    assert status["phase"] == "Ready"
    assert (status["readyWorkers"], status["workerReplicas"], status["observedGeneration"]) == (2, 2, 3)
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Reconciled": "True", "Ready": "True"}
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    degraded = cluster_status(
        spec,
        3,
        _with_workload_status(store, {"worker": 1, "router": 2, "coordinator": 2}),
        False,
        status["conditions"],
        "t2",
    )
    assert degraded["phase"] == "Degraded"
    ready_condition = next(c for c in degraded["conditions"] if c["type"] == "Ready")
    assert ready_condition["message"].startswith("1/2 workers ready")
    assert ready_condition["lastTransitionTime"] == "t2"
    reconciled = next(c for c in degraded["conditions"] if c["type"] == "Reconciled")
    assert reconciled["lastTransitionTime"] == "t1"  # unchanged status keeps its transition time
    assert cluster_status(spec, 3, ready, True, [], "t3")["phase"] == "Progressing"
