"""EpochCluster status from the workloads the operator owns (pure; the handlers write it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from epochserve.operators.conditions import Condition, set_condition
from epochserve.operators.names import Component, component_name, selector_labels
from epochserve.operators.spec import ClusterSpec

Manifest = dict[str, Any]

_WORKLOAD_KIND: dict[Component, str] = {
    "worker": "StatefulSet",
    "router": "Deployment",
    "coordinator": "Deployment",
}


def _find(existing: Sequence[Manifest], kind: str, name: str) -> Manifest | None:
    return next((o for o in existing if o.get("kind") == kind and o["metadata"]["name"] == name), None)


def _is_rolling(workload: Manifest, replicas: int) -> bool:
    """A workload whose controller has not yet caught up with its latest spec."""
    status = workload.get("status") or {}
    generation = workload["metadata"].get("generation", 0)
    return (
        int(status.get("observedGeneration", 0)) < generation
        or int(status.get("updatedReplicas", 0)) < replicas
    )


def cluster_status(
    spec: ClusterSpec,
    generation: int,
    existing: Sequence[Manifest],
    changed: bool,
    previous_conditions: Sequence[Condition],
    now: str,
) -> dict[str, Any]:
    """Status for the EpochCluster; `changed` says this reconcile just applied something.

    Phase: Pending while no workload exists and none is being created, Progressing while one is
    being created or changed, Ready when every component has all its replicas ready, Degraded
    otherwise (e.g. a worker's node died).
    """
    wanted: dict[Component, int] = {
        "worker": spec.workers.replicas,
        "router": spec.router.replicas,
        "coordinator": spec.coordinator.replicas,
    }
    ready: dict[Component, int] = {}
    worker_pods = 0
    rolling = changed
    found = 0
    for component, replicas in wanted.items():
        workload = _find(existing, _WORKLOAD_KIND[component], component_name(spec.name, component))
        ready[component] = int(((workload or {}).get("status") or {}).get("readyReplicas", 0))
        if workload is not None:
            found += 1
            if component == "worker":
                worker_pods = int((workload.get("status") or {}).get("replicas", 0))
            rolling = rolling or _is_rolling(workload, replicas)
    all_ready = all(ready[c] >= wanted[c] for c in wanted)
    if found == 0 and not changed:
        phase = "Pending"
    elif all_ready and not rolling:
        phase = "Ready"
    else:
        phase = "Progressing" if rolling else "Degraded"
    summary = ", ".join(f"{ready[c]}/{wanted[c]} {c}s ready" for c in wanted)
    conditions = set_condition(
        previous_conditions, "Reconciled", "True", "Applied", "children match the spec", generation, now
    )
    conditions = set_condition(
        conditions, "Ready", "True" if phase == "Ready" else "False", phase, summary, generation, now
    )
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(spec.name, "worker").items())
    return {
        "phase": phase,
        "observedGeneration": generation,
        "workerReplicas": worker_pods,
        "readyWorkers": ready["worker"],
        "readyRouters": ready["router"],
        "readyCoordinators": ready["coordinator"],
        "workerSelector": selector,
        "conditions": conditions,
    }
