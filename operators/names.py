"""Names every part of the operator agrees on: API group, ports, labels, annotations, object names.

Ports are the ones the CRDs' documentation and `epochctl` flags promise (docs/kubernetes.md); they are
fixed inside a pod, so they are constants here rather than spec fields.
"""

from __future__ import annotations

from typing import Literal

GROUP = "epochserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CLUSTER_KIND = "EpochCluster"
CLUSTER_PLURAL = "epochclusters"
ROLLOUT_KIND = "PolicyRollout"
ROLLOUT_PLURAL = "policyrollouts"

FIELD_MANAGER = "epochserve-operator"
MANAGED_BY = "epochserve-operator"

WORKER_PORT = 50051
WORKER_SESSION_PORT = 50052  # the session link routers prefer to gRPC Session (docs/router.md)
ROUTER_PORT = 50050
ROUTER_METRICS_PORT = 9090
ADMIN_PORT = 50060

MODEL_MOUNT = "/models"
TOKENIZER_MOUNT = "/tokenizer"  # the routers' tokenizer source (the model, or its override)
ETCD_TLS_MOUNT = "/etc/epochserve/etcd"
ADMIN_TOKEN_MOUNT = "/var/run/epochserve"
ADMIN_TOKEN_FILE = f"{ADMIN_TOKEN_MOUNT}/admin-token"

SPEC_HASH_ANNOTATION = f"{GROUP}/spec-hash"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"

# Longest EpochCluster name whose derived names still fit: "<name>-coordinator" must be a DNS label
# (63) and a StatefulSet's pods carry "<name>-worker-<10-char revision hash>" as a label value (63).
MAX_CLUSTER_NAME = 40

Component = Literal["worker", "router", "coordinator"]


def component_name(cluster: str, component: Component) -> str:
    """Name of the StatefulSet/Deployment, Service and PodDisruptionBudget of one component."""
    return f"{cluster}-{component}"


def config_map_name(cluster: str) -> str:
    """Name of the ConfigMap that carries the etcd wiring of a cluster."""
    return f"{cluster}-config"


def etcd_cluster_key(namespace: str, cluster: str) -> str:
    """The `--cluster` value: the etcd keyspace is /epochserve/<key>/.

    Namespaces are DNS labels (no dots), so "<namespace>.<name>" is unambiguous and two EpochClusters
    of the same name in different namespaces never share a keyspace on one etcd.
    """
    return f"{namespace}.{cluster}"


def admin_address(namespace: str, cluster: str) -> str:
    """host:port of a cluster's Admin API (the coordinator Service) from inside the Kubernetes cluster."""
    return f"{component_name(cluster, 'coordinator')}.{namespace}.svc:{ADMIN_PORT}"


def selector_labels(cluster: str, component: Component) -> dict[str, str]:
    """Labels that select one component's pods; never change them (selectors are immutable)."""
    return {
        "app.kubernetes.io/name": "epochserve",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/component": component,
    }


def owned_labels(cluster: str) -> dict[str, str]:
    """Labels on every object the operator creates for a cluster; used to list them back."""
    return {
        "app.kubernetes.io/name": "epochserve",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
