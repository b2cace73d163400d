"""Router and coordinator manifests: a Deployment, a Service and a PDB each.

Both tiers are stateless Deployments (coordinators keep all state in etcd and elect a leader there),
so they share one Deployment shape and differ in container, ports and what they mount.
"""

from __future__ import annotations

from epochserve.operators.builders.common import (
    Manifest,
    admin_token_volume,
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
from epochserve.operators.builders.router_front import http_front_parts
from epochserve.operators.names import (
    ADMIN_PORT,
    ADMIN_TOKEN_FILE,
    CONFIG_HASH_ANNOTATION,
    ROUTER_METRICS_PORT,
    ROUTER_PORT,
    Component,
    component_name,
    selector_labels,
)
from epochserve.operators.spec import ClusterSpec, ServiceTierSpec


def _deployment(
    spec: ClusterSpec,
    component: Component,
    tier: ServiceTierSpec,
    container: Manifest,
    volumes: list[Manifest],
) -> Manifest:
    """A Deployment that surges before it removes a pod, spread over nodes when it can be."""
    labels = selector_labels(spec.name, component)
    pod: Manifest = {
        **pod_spec_common(spec),
        "containers": [container],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": labels},
            }
        ],
    }
    if volumes:
        pod["volumes"] = volumes
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(spec, component_name(spec.name, component), component),
        "spec": {
            "replicas": tier.replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {CONFIG_HASH_ANNOTATION: config_hash(spec, component)},
                },
                "spec": pod,
            },
        },
    }


def _container(spec: ClusterSpec, name: str, args: list[str], port: int, tier: ServiceTierSpec) -> Manifest:
    return {
        "name": name,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["epochctl"],
        "args": args,
        "env": cluster_env(spec),
        "ports": [{"name": "grpc", "containerPort": port, "protocol": "TCP"}],
        "resources": resources(tier.resources),
        "readinessProbe": grpc_probe(port, 5, 2),
        "livenessProbe": grpc_probe(port, 10, 6),
        "securityContext": container_security(),
    }


def router_objects(spec: ClusterSpec) -> list[Manifest]:
    """Service (gRPC, Prometheus metrics, the HTTP front when on), PDB and Deployment of the routers.

    With the HTTP front on, the pods also read the tokenizer and the Admin token (router_front)."""
    front = http_front_parts(spec)
    args = ["router", "--host", "0.0.0.0", "--port", str(ROUTER_PORT)]
    args += ["--metrics-port", str(ROUTER_METRICS_PORT), *etcd_args(spec), *front.args]
    ports = [("grpc", ROUTER_PORT), ("metrics", ROUTER_METRICS_PORT)]
    if spec.router.http_port is not None:
        ports.append(("http", spec.router.http_port))
    container = _container(spec, "router", args, ROUTER_PORT, spec.router)
    container["ports"] += [
        {"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports[1:]
    ]
    tls_volumes, tls_mounts = etcd_volumes(spec)
    if front.mounts or tls_mounts:
        container["volumeMounts"] = [*front.mounts, *tls_mounts]
    deployment = _deployment(spec, "router", spec.router, container, [*front.volumes, *tls_volumes])
    if front.init_containers:
        deployment["spec"]["template"]["spec"]["initContainers"] = front.init_containers
    return [
        service(spec, "router", ports, service_type=spec.router.service_type),
        pod_disruption_budget(spec, "router"),
        deployment,
    ]


def coordinator_objects(spec: ClusterSpec) -> list[Manifest]:
    """Service (Admin API), PDB and Deployment of the coordinators, with the token mounted."""
    args = ["coordinator", "--admin-host", "0.0.0.0", "--admin-port", str(ADMIN_PORT)]
    args += [*etcd_args(spec), "--token-file", ADMIN_TOKEN_FILE]
    container = _container(spec, "coordinator", args, ADMIN_PORT, spec.coordinator)
    volumes, mounts = etcd_volumes(spec)
    token_volume, token_mount = admin_token_volume(spec)
    container["volumeMounts"] = [token_mount, *mounts]
    return [
        service(spec, "coordinator", [("grpc", ADMIN_PORT)]),
        pod_disruption_budget(spec, "coordinator"),
        _deployment(spec, "coordinator", spec.coordinator, container, [token_volume, *volumes]),
    ]
