"""Pieces every component's manifests share: metadata with owner references, etcd wiring, probes.

All functions here are pure: same ClusterSpec in, same dicts out, no clock, no randomness, no API
calls, so that a reconcile of an unchanged cluster computes byte-identical objects.
"""

from __future__ import annotations

from typing import Any

from epochserve.operators.names import (
    ADMIN_TOKEN_MOUNT,
    API_VERSION,
    CLUSTER_KIND,
    ETCD_TLS_MOUNT,
    Component,
    component_name,
    config_map_name,
    owned_labels,
    selector_labels,
)
from epochserve.operators.spec import ClusterSpec, Resources

Manifest = dict[str, Any]


def owner_reference(spec: ClusterSpec) -> Manifest:
    """The EpochCluster as controller owner: deleting it garbage-collects every child."""
    return {
        "apiVersion": API_VERSION,
        "kind": CLUSTER_KIND,
        "name": spec.name,
        "uid": spec.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(spec: ClusterSpec, name: str, component: Component | None = None) -> Manifest:
    """metadata for a child object: namespace, owned labels (+ component), owner reference."""
    labels = owned_labels(spec.name)
    if component is not None:
        labels = {**labels, **selector_labels(spec.name, component)}
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(spec)],
    }


def resources(requested: Resources, extra: dict[str, str] | None = None) -> Manifest:
    """A container's resources block; `extra` (GPUs) goes into both requests and limits."""
    extra = extra or {}
    block: Manifest = {}
    if requested.requests or extra:
        block["requests"] = {**requested.requests, **extra}
    if requested.limits or extra:
        block["limits"] = {**requested.limits, **extra}
    return block


def grpc_probe(port: int, period_s: int, failure_threshold: int) -> Manifest:
    """A kubelet-native gRPC health probe (grpc.health.v1, empty service name)."""
    return {
        "grpc": {"port": port},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failure_threshold,
    }


def cluster_env(spec: ClusterSpec) -> list[Manifest]:
    """Environment every epochserve container gets; `$(VAR)` in args expands from it."""
    config = config_map_name(spec.name)
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {
            "name": "EPOCHSERVE_CLUSTER",
            "valueFrom": {"configMapKeyRef": {"name": config, "key": "cluster"}},
        },
        {
            "name": "ETCD_ENDPOINTS",
            "valueFrom": {"configMapKeyRef": {"name": config, "key": "etcd-endpoints"}},
        },
    ]


def etcd_args(spec: ClusterSpec) -> list[str]:
    """`--etcd-*` and `--cluster` flags, reading the ConfigMap through the environment."""
    args = ["--etcd-endpoints", "$(ETCD_ENDPOINTS)", "--cluster", "$(EPOCHSERVE_CLUSTER)"]
    if spec.etcd.tls_secret:
        args += [
            "--etcd-ca",
            f"{ETCD_TLS_MOUNT}/ca.crt",
            "--etcd-cert",
            f"{ETCD_TLS_MOUNT}/tls.crt",
            "--etcd-key",
            f"{ETCD_TLS_MOUNT}/tls.key",
        ]
    return args


def etcd_volumes(spec: ClusterSpec) -> tuple[list[Manifest], list[Manifest]]:
    """(volumes, volumeMounts) for the etcd client certificate, empty without TLS."""
    if not spec.etcd.tls_secret:
        return [], []
    volume = {"name": "etcd-tls", "secret": {"secretName": spec.etcd.tls_secret, "defaultMode": 0o444}}
    mount = {"name": "etcd-tls", "mountPath": ETCD_TLS_MOUNT, "readOnly": True}
    return [volume], [mount]


def admin_token_volume(spec: ClusterSpec) -> tuple[Manifest, Manifest]:
    """(volume, volumeMount) that put the Admin token at ADMIN_TOKEN_FILE (coordinators, routers)."""
    volume = {
        "name": "admin-token",
        "secret": {
            "secretName": spec.admin_token_secret,
            "items": [{"key": spec.admin_token_key, "path": "admin-token"}],
            "defaultMode": 0o444,  # one container per pod mounts it; the image user is not fixed
        },
    }
    return volume, {"name": "admin-token", "mountPath": ADMIN_TOKEN_MOUNT, "readOnly": True}


def container_security() -> Manifest:
    """Least privilege for every epochserve container (GPUs come through the device plugin)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_spec_common(spec: ClusterSpec) -> Manifest:
    """Pod-level fields shared by all components."""
    pod: Manifest = {"enableServiceLinks": False}
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in spec.image_pull_secrets]
    return pod


def pod_disruption_budget(spec: ClusterSpec, component: Component) -> Manifest:
    """At most one pod of a component evicted at a time (node drains, cluster autoscaler)."""
    name = component_name(spec.name, component)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(spec, name, component),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(spec.name, component)},
        },
    }


def service(
    spec: ClusterSpec,
    component: Component,
    ports: list[tuple[str, int]],
    service_type: str = "ClusterIP",
    headless: bool = False,
) -> Manifest:
    """A Service over one component's pods, exposing the named TCP ports."""
    body: Manifest = {
        "type": service_type,
        "selector": selector_labels(spec.name, component),
        "ports": [
            {"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
            for port_name, port in ports
        ],
    }
    if headless:
        body["clusterIP"] = "None"
        # Peers find a worker by its pod DNS name before it is ready (it registers in etcd itself).
        body["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(spec, component_name(spec.name, component), component),
        "spec": body,
    }
