"""ObjectStore on a real API server, through the kubernetes client's dynamic API.

Writes use server-side apply with one field manager and force: the stored object ends up with
exactly the fields the builders set (fields we stopped setting are removed), and fields other
controllers own (e.g. the scheduler's, an HPA's) are left alone. The kubernetes client is
synchronous; kopf runs sync handlers in its thread pool, so calling it there blocks no event loop.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient

from epochserve.operators.names import FIELD_MANAGER
from epochserve.operators.reconcile import MANAGED_KINDS, Manifest, ObjectKey


def load_api_client() -> client.ApiClient:
    """In-cluster service-account credentials when running in a pod, else the local kubeconfig."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class KubeObjectStore:
    """ObjectStore (reconcile.py) backed by the API server; raises ApiException on refusal."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self._dynamic = DynamicClient(api_client)

    def _resource(self, api_version: str, kind: str) -> Any:
        return self._dynamic.resources.get(api_version=api_version, kind=kind)

    def list_owned(self, namespace: str, labels: dict[str, str]) -> list[Manifest]:
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        found: list[Manifest] = []
        for api_version, kind in MANAGED_KINDS:
            listing = self._resource(api_version, kind).get(namespace=namespace, label_selector=selector)
            for item in listing.to_dict().get("items", []):
                # List items omit apiVersion/kind; ObjectKey needs them.
                found.append({**item, "apiVersion": api_version, "kind": kind})
        return found

    def apply(self, manifest: Manifest) -> None:
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        self._dynamic.server_side_apply(
            resource,
            body=manifest,
            namespace=manifest["metadata"]["namespace"],
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )

    def delete(self, key: ObjectKey) -> None:
        resource = self._resource(key.api_version, key.kind)
        resource.delete(name=key.name, namespace=key.namespace, propagation_policy="Background")
