"""The cluster ConfigMap (etcd wiring) and the hash that rolls pods when it changes."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from epochserve.operators.builders.common import Manifest, object_meta
from epochserve.operators.names import Component, config_map_name, etcd_cluster_key
from epochserve.operators.spec import ClusterSpec


def config_map(spec: ClusterSpec) -> Manifest:
    """ConfigMap read by every epochserve container through env (see common.cluster_env)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(spec, config_map_name(spec.name)),
        "data": {
            "cluster": etcd_cluster_key(spec.namespace, spec.name),
            "etcd-endpoints": ",".join(spec.etcd.endpoints),
        },
    }


def content_hash(value: Any) -> str:
    """A stable short digest of JSON-able data (sorted keys), used in annotations."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def config_hash(spec: ClusterSpec, component: Component) -> str:
    """Digest of what one component's pods read from outside their template.

    Environment read from a ConfigMap is fixed at container start, so pod templates carry this digest
    as an annotation: a change to it rolls the pods, a change to nothing else leaves them alone. Only
    coordinators and routers with the HTTP front read the Admin token, so renaming its Secret never
    restarts (drains) GPU workers.
    """
    inputs: dict[str, Any] = {"config": config_map(spec)["data"], "etcdTlsSecret": spec.etcd.tls_secret}
    has_front = spec.router.http_port is not None
    reads_admin_token = component == "coordinator" or (component == "router" and has_front)
    if reads_admin_token:
        inputs["adminToken"] = [spec.admin_token_secret, spec.admin_token_key]
    return content_hash(inputs)
