"""kopf handlers for EpochCluster: parse, build, reconcile, write status. Nothing else lives here.

Reconcile runs on create, on spec change, on operator start (resume) and every
RECONCILE_INTERVAL_S (drift, and status from the workloads). Children are owned by the cluster, so
deleting an EpochCluster needs no handler: the garbage collector removes them.
"""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from epochserve.operators.builders.cluster import build_cluster
from epochserve.operators.cluster_status import cluster_status
from epochserve.operators.conditions import utc_now
from epochserve.operators.context import context_of
from epochserve.operators.names import CLUSTER_PLURAL, GROUP, VERSION, owned_labels
from epochserve.operators.reconcile import reconcile
from epochserve.operators.spec import SpecError, parse_cluster

RECONCILE_INTERVAL_S = 60.0
API_RETRY_DELAY_S = 15.0


def reconcile_cluster(body: kopf.Body, patch: kopf.Patch, memo: Any) -> None:
    """One level-based pass; raises PermanentError for a bad spec, TemporaryError on API refusal."""
    context = context_of(memo)
    try:
        spec = parse_cluster(body, context.config.managed_etcd)
    except SpecError as error:
        raise kopf.PermanentError(str(error)) from error
    try:
        actions, existing = reconcile(
            context.store, build_cluster(spec), spec.namespace, owned_labels(spec.name), spec.uid
        )
    except ApiException as error:
        message = f"API server: {error.status} {error.reason}"
        raise kopf.TemporaryError(message, delay=API_RETRY_DELAY_S) from error
    current = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation", 1))
    status = cluster_status(
        spec, generation, existing, bool(actions), current.get("conditions") or [], utc_now()
    )
    if {**current, **status} != current:
        patch.status.update(status)


@kopf.on.resume(GROUP, VERSION, CLUSTER_PLURAL)
@kopf.on.create(GROUP, VERSION, CLUSTER_PLURAL)
@kopf.on.update(GROUP, VERSION, CLUSTER_PLURAL, field="spec")
def on_cluster_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    reconcile_cluster(body, patch, memo)


@kopf.timer(GROUP, VERSION, CLUSTER_PLURAL, interval=RECONCILE_INTERVAL_S, initial_delay=RECONCILE_INTERVAL_S)
def on_cluster_timer(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    reconcile_cluster(body, patch, memo)
