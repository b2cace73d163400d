"""The operator's own configuration, read once at startup from its environment (set by the chart)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from epochserve.errors import ConfigError
from epochserve.operators.spec import ManagedEtcd

ENV_NAMESPACE = "EPOCHSERVE_OPERATOR_NAMESPACE"
ENV_ETCD_ENDPOINTS = "EPOCHSERVE_MANAGED_ETCD_ENDPOINTS"
ENV_ETCD_TLS_SECRET = "EPOCHSERVE_MANAGED_ETCD_TLS_SECRET"


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    """namespace: where the operator (and the chart's etcd) runs; managed_etcd: None without one."""

    namespace: str
    managed_etcd: ManagedEtcd | None

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ConfigError(f"{ENV_NAMESPACE} must name the operator's namespace")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """EPOCHSERVE_OPERATOR_NAMESPACE (default "default"), and for a chart-managed etcd
        EPOCHSERVE_MANAGED_ETCD_ENDPOINTS (comma-separated host:port) and, with TLS,
        EPOCHSERVE_MANAGED_ETCD_TLS_SECRET (a Secret with ca.crt, tls.crt, tls.key)."""
        env = os.environ if env is None else env
        namespace = env.get(ENV_NAMESPACE, "default")
        endpoints = tuple(e.strip() for e in env.get(ENV_ETCD_ENDPOINTS, "").split(",") if e.strip())
        managed = None
        if endpoints:
            managed = ManagedEtcd(
                namespace=namespace, endpoints=endpoints, tls_secret=env.get(ENV_ETCD_TLS_SECRET) or None
            )
        return cls(namespace=namespace, managed_etcd=managed)
