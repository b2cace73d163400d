"""Typed view of an EpochCluster, built from the object the API server hands the operator.

The API server has already validated the spec against the CRD schema and filled in its defaults
(charts/epochserve/crds/), so parsing reads required keys directly. What the schema cannot say
(name lengths, managed etcd being available, GPUs set twice) is checked here and raised as
`SpecError`, which the kopf handlers turn into a PermanentError: retrying cannot fix a bad spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from epochserve.errors import ConfigError
from epochserve.operators.names import MAX_CLUSTER_NAME, ROUTER_METRICS_PORT, ROUTER_PORT


class SpecError(ConfigError):
    """An EpochCluster or PolicyRollout spec the operator cannot act on, whatever it retries."""


@dataclass(frozen=True, slots=True)
class ManagedEtcd:
    """The etcd that the Helm chart runs beside the operator (from the operator's environment)."""

    namespace: str
    endpoints: tuple[str, ...]
    tls_secret: str | None


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU/memory requests and limits as Kubernetes quantity strings."""

    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Either a directory on a PVC (claim_name set) or a URI fetched by an init container."""

    claim_name: str | None
    path: str | None
    uri: str | None
    fetcher_image: str | None
    fetcher_command: tuple[str, ...]
    size_limit: str


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One pod per replica, holding `tp` GPUs; engine flags map 1:1 to `epochctl worker` flags."""

    replicas: int
    tp: int
    gpu_resource_name: str
    batch_invariant: bool
    max_num_seqs: int | None
    kv_cache_memory_fraction: float | None
    extra_args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    drain_seconds: int
    startup_seconds: int
    shm_size: str
    resources: Resources
    node_selector: dict[str, str]
    tolerations: tuple[dict[str, Any], ...]
    affinity: dict[str, Any] | None
    priority_class_name: str | None


@dataclass(frozen=True, slots=True)
class ServiceTierSpec:
    """Routers or coordinators: a Deployment of identical replicas behind a Service."""

    replicas: int
    resources: Resources
    service_type: str = "ClusterIP"


TokenizerMode = Literal["Model", "Pvc", "Disabled"]


@dataclass(frozen=True, slots=True)
class TokenizerSource:
    """Where the routers' HTTP front reads its tokenizer and chat template (spec.router.tokenizer).

    Model: the workers' model source; Pvc: `path` on another claim; Disabled: none (token ids only).
    """

    mode: TokenizerMode = "Model"
    claim_name: str | None = None  # set for Pvc only
    path: str | None = None  # inside that claim; None: its root


@dataclass(frozen=True, slots=True)
class RouterSpec(ServiceTierSpec):
    """The routers, which may also serve the HTTP front (docs/http.md)."""

    http_port: int | None = None  # in the pod and on the Service; None: no HTTP front
    http_processes: int = 1  # `--http-processes`: the front in that many processes of its own
    tokenizer: TokenizerSource = field(default_factory=TokenizerSource)
    model_name: str | None = None  # the model's name on the HTTP front; None: the cluster's name


@dataclass(frozen=True, slots=True)
class EtcdConnection:
    """Resolved etcd endpoints (host:port) and the Secret with ca.crt/tls.crt/tls.key, if TLS."""

    endpoints: tuple[str, ...]
    tls_secret: str | None


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Everything the manifest builders need about one EpochCluster; pure data."""

    name: str
    namespace: str
    uid: str
    image: str
    image_pull_policy: str
    image_pull_secrets: tuple[str, ...]
    model: ModelSource
    workers: WorkerSpec
    router: RouterSpec
    coordinator: ServiceTierSpec
    etcd: EtcdConnection
    admin_token_secret: str
    admin_token_key: str


def _resources(raw: Mapping[str, Any] | None) -> Resources:
    raw = raw or {}
    return Resources(
        requests={k: str(v) for k, v in (raw.get("requests") or {}).items()},
        limits={k: str(v) for k, v in (raw.get("limits") or {}).items()},
    )


def _model(raw: Mapping[str, Any]) -> ModelSource:
    pvc = raw.get("pvc")
    fetcher = raw.get("fetcher") or {}
    return ModelSource(
        claim_name=pvc["claimName"] if pvc else None,
        path=pvc.get("path") if pvc else None,
        uri=raw.get("uri"),
        fetcher_image=fetcher.get("image"),
        fetcher_command=tuple(fetcher.get("command", ())),
        size_limit=str(raw.get("sizeLimit", "200Gi")),
    )


def _workers(raw: Mapping[str, Any]) -> WorkerSpec:
    resources = _resources(raw.get("resources"))
    gpu = raw["gpuResourceName"]
    if gpu in resources.requests or gpu in resources.limits:
        raise SpecError(f"workers.resources must not set {gpu}: the operator requests tp GPUs itself")
    fraction = raw.get("kvCacheMemoryFraction")
    return WorkerSpec(
        replicas=int(raw["replicas"]),
        tp=int(raw["tp"]),
        gpu_resource_name=gpu,
        batch_invariant=bool(raw["batchInvariant"]),
        max_num_seqs=raw.get("maxNumSeqs"),
        kv_cache_memory_fraction=None if fraction is None else float(fraction),
        extra_args=tuple(raw.get("extraArgs", ())),
        env=tuple((item["name"], item.get("value", "")) for item in raw.get("env", ())),
        drain_seconds=int(raw["drainSeconds"]),
        startup_seconds=int(raw["startupSeconds"]),
        shm_size=str(raw["shmSize"]),
        resources=resources,
        node_selector=dict(raw.get("nodeSelector") or {}),
        tolerations=tuple(raw.get("tolerations") or ()),
        affinity=raw.get("affinity"),
        priority_class_name=raw.get("priorityClassName"),
    )


def _router(raw: Mapping[str, Any]) -> RouterSpec:
    http_port = int(raw["httpPort"]) or None
    if http_port in (ROUTER_PORT, ROUTER_METRICS_PORT):
        raise SpecError(f"router.httpPort {http_port} is the routers' gRPC or metrics port")
    if http_port is not None and http_port < 1024:
        raise SpecError(
            f"router.httpPort {http_port}: below 1024 needs a capability the router container drops"
        )
    return RouterSpec(
        replicas=int(raw["replicas"]),
        resources=_resources(raw.get("resources")),
        service_type=raw["serviceType"],
        http_port=http_port,
        http_processes=int(raw.get("httpProcesses", 1)),
        tokenizer=_tokenizer(raw["tokenizer"]),
        model_name=raw.get("modelName"),
    )


def _tokenizer(raw: Mapping[str, Any]) -> TokenizerSource:
    mode, pvc = raw["mode"], raw.get("pvc")
    if (mode == "Pvc") != (pvc is not None):  # the schema says so too; the builders rely on it
        raise SpecError("router.tokenizer: pvc is required with mode Pvc and allowed with it only")
    if pvc is None:
        return TokenizerSource(mode=mode)
    return TokenizerSource(mode=mode, claim_name=pvc["claimName"], path=pvc.get("path"))


def _etcd(raw: Mapping[str, Any], namespace: str, managed: ManagedEtcd | None) -> EtcdConnection:
    if raw["mode"] == "External":
        return EtcdConnection(endpoints=tuple(raw["endpoints"]), tls_secret=raw.get("tlsSecret"))
    if managed is None or not managed.endpoints:
        raise SpecError("etcd.mode is Managed but this operator was installed without a managed etcd")
    if managed.namespace != namespace:
        raise SpecError(
            f"the managed etcd serves namespace {managed.namespace!r} only (its client certificate "
            f"lives there); use etcd.mode External in {namespace!r}"
        )
    return EtcdConnection(endpoints=managed.endpoints, tls_secret=raw.get("tlsSecret") or managed.tls_secret)


def parse_cluster(body: Mapping[str, Any], managed_etcd: ManagedEtcd | None) -> ClusterSpec:
    """Build a ClusterSpec from a defaulted EpochCluster object; raise SpecError if unusable.

    A missing key means the object did not pass through the API server's defaulting (or the CRD
    installed is older than this operator); that is reported as a SpecError naming the key.
    """
    try:
        return _parse_cluster(body, managed_etcd)
    except KeyError as missing:
        raise SpecError(f"EpochCluster is missing field {missing}; is the CRD up to date?") from None


def _parse_cluster(body: Mapping[str, Any], managed_etcd: ManagedEtcd | None) -> ClusterSpec:
    meta = body["metadata"]
    name = meta["name"]
    if len(name) > MAX_CLUSTER_NAME:
        raise SpecError(f"EpochCluster names are limited to {MAX_CLUSTER_NAME} characters: {name!r}")
    spec = body["spec"]
    return ClusterSpec(
        name=name,
        namespace=meta["namespace"],
        uid=meta["uid"],
        image=spec["image"],
        image_pull_policy=spec["imagePullPolicy"],
        image_pull_secrets=tuple(spec.get("imagePullSecrets", ())),
        model=_model(spec["model"]),
        workers=_workers(spec["workers"]),
        router=_router(spec["router"]),
        coordinator=ServiceTierSpec(
            replicas=int(spec["coordinator"]["replicas"]),
            resources=_resources(spec["coordinator"].get("resources")),
        ),
        etcd=_etcd(spec["etcd"], meta["namespace"], managed_etcd),
        admin_token_secret=spec["adminTokenSecret"]["name"],
        admin_token_key=spec["adminTokenSecret"]["key"],
    )
