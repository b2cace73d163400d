"""Worker manifests: a StatefulSet (one pod per TP group, `tp` GPUs each), its headless Service, PDB.

A StatefulSet rather than a Deployment because each worker has a stable identity (`--worker-id` is
the pod name, which the control plane keys progress by) and pods are replaced one name at a time.
"""

from __future__ import annotations

import math

from epochserve.operators.builders.common import (
    Manifest,
    cluster_env,
    container_security,
    etcd_args,
    etcd_volumes,
    grpc_probe,
    object_meta,
    pod_disruption_budget,
    pod_spec_common,
    resources,
    service,
)
from epochserve.operators.builders.config import config_hash
from epochserve.operators.builders.model import fetcher_init_containers, model_dir, model_volume
from epochserve.operators.names import (
    CONFIG_HASH_ANNOTATION,
    MODEL_MOUNT,
    WORKER_PORT,
    WORKER_SESSION_PORT,
    component_name,
    selector_labels,
)
from epochserve.operators.spec import ClusterSpec

STARTUP_PROBE_PERIOD_S = 10


def worker_args(spec: ClusterSpec) -> list[str]:
    """`epochctl worker ...` arguments; rank 0 serves gRPC on WORKER_PORT and the session link on
    WORKER_SESSION_PORT."""
    workers = spec.workers
    args = ["worker", "--model", model_dir(spec, MODEL_MOUNT), "--tp", str(workers.tp)]
    args += ["--host", "0.0.0.0", "--port", str(WORKER_PORT), "--session-port", str(WORKER_SESSION_PORT)]
    args += ["--device", "cuda"]
    args += [*etcd_args(spec), "--worker-id", "$(POD_NAME)"]
    if workers.batch_invariant:
        args.append("--batch-invariant")
    if workers.max_num_seqs is not None:
        args += ["--max-num-seqs", str(workers.max_num_seqs)]
    if workers.kv_cache_memory_fraction is not None:
        args += ["--kv-cache-memory-fraction", repr(workers.kv_cache_memory_fraction)]
    return [*args, *workers.extra_args]


def _worker_container(spec: ClusterSpec, tls_mounts: list[Manifest]) -> Manifest:
    workers = spec.workers
    env = [
        *cluster_env(spec),
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *({"name": name, "value": value} for name, value in workers.env),
    ]
    startup_failures = max(1, math.ceil(workers.startup_seconds / STARTUP_PROBE_PERIOD_S))
    return {
        "name": "worker",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["epochctl"],
        "args": worker_args(spec),
        "env": env,
        "ports": [
            {"name": "grpc", "containerPort": WORKER_PORT, "protocol": "TCP"},
            {"name": "session", "containerPort": WORKER_SESSION_PORT, "protocol": "TCP"},
        ],
        # GPUs are an extended resource: requests must equal limits, and both equal tp.
        "resources": resources(workers.resources, {workers.gpu_resource_name: str(workers.tp)}),
        "startupProbe": grpc_probe(WORKER_PORT, STARTUP_PROBE_PERIOD_S, startup_failures),
        "readinessProbe": grpc_probe(WORKER_PORT, 5, 2),
        "livenessProbe": grpc_probe(WORKER_PORT, 10, 6),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": spec.model.claim_name is not None},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *tls_mounts,
        ],
        "securityContext": container_security(),
    }


def _worker_pod(spec: ClusterSpec) -> Manifest:
    workers = spec.workers
    tls_volumes, tls_mounts = etcd_volumes(spec)
    pod: Manifest = {
        **pod_spec_common(spec),
        # On SIGTERM the worker stops admitting and drains running sequences; this is its budget.
        "terminationGracePeriodSeconds": workers.drain_seconds,
        "containers": [_worker_container(spec, tls_mounts)],
        "volumes": [
            model_volume(spec, "model"),
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": workers.shm_size}},
            *tls_volumes,
        ],
    }
    init = fetcher_init_containers(spec, "model", MODEL_MOUNT)
    if init:
        pod["initContainers"] = init
    optional = {
        "nodeSelector": workers.node_selector,
        "tolerations": list(workers.tolerations),
        "affinity": workers.affinity,
        "priorityClassName": workers.priority_class_name,
    }
    pod.update({key: value for key, value in optional.items() if value})
    return pod


def worker_statefulset(spec: ClusterSpec) -> Manifest:
    """The StatefulSet of worker pods; Parallel so a scale-up loads all new workers at once."""
    name = component_name(spec.name, "worker")
    labels = selector_labels(spec.name, "worker")
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_meta(spec, name, "worker"),
        "spec": {
            "replicas": spec.workers.replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash(spec, "worker")},
                },
                "spec": _worker_pod(spec),
            },
        },
    }


def worker_objects(spec: ClusterSpec) -> list[Manifest]:
    """Headless Service (stable pod DNS), PodDisruptionBudget and StatefulSet of the workers."""
    return [
        service(spec, "worker", [("grpc", WORKER_PORT), ("session", WORKER_SESSION_PORT)], headless=True),
        pod_disruption_budget(spec, "worker"),
        worker_statefulset(spec),
    ]
