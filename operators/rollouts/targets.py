"""Find a cluster's Admin API and token, and write PolicyRollout status, through the API server.

The kubernetes client is synchronous; these helpers run it in a thread so that the async rollout
handlers never block kopf's event loop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from epochserve.operators.names import CLUSTER_PLURAL, GROUP, ROLLOUT_PLURAL, VERSION, admin_address
from epochserve.operators.rollouts.admin import AdminTarget
from epochserve.operators.rollouts.request import RolloutRequest
from epochserve.operators.rollouts.status import Status


def _read_target(api_client: Any, namespace: str, cluster: str) -> AdminTarget | None:
    try:
        api = client.CustomObjectsApi(api_client)
        body: Any = api.get_namespaced_custom_object(GROUP, VERSION, namespace, CLUSTER_PLURAL, cluster)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    ref = body["spec"]["adminTokenSecret"]
    secret = client.CoreV1Api(api_client).read_namespaced_secret(ref["name"], namespace)
    token = base64.b64decode((secret.data or {})[ref.get("key", "token")]).decode().strip()
    return AdminTarget(address=admin_address(namespace, cluster), token=token)


async def resolve_target(api_client: Any, request: RolloutRequest) -> AdminTarget | None:
    """The Admin target of the rollout's cluster; None when the EpochCluster does not exist.

    Raises ApiException (API server refused) or KeyError (token key missing from the Secret).
    """
    return await asyncio.to_thread(_read_target, api_client, request.namespace, request.cluster)


class KubeStatusSink:
    """StatusSink that merge-patches the PolicyRollout's status subresource."""

    def __init__(self, api_client: Any, request: RolloutRequest) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._request = request

    async def write(self, status: Status) -> None:
        await asyncio.to_thread(
            self._api.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            self._request.namespace,
            ROLLOUT_PLURAL,
            self._request.name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )
