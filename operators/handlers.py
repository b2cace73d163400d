"""Every kopf handler of the operator; importing this module registers them with kopf.

The startup handler builds the shared OperatorContext and keeps kopf's bookkeeping in annotations
under our own prefix: the CRDs' structural schemas would prune kopf's default status fields.
"""

from __future__ import annotations

from typing import Any

import kopf

from epochserve.operators import cluster_handlers
from epochserve.operators.config import OperatorConfig
from epochserve.operators.context import OperatorContext
from epochserve.operators.kube_store import KubeObjectStore, load_api_client
from epochserve.operators.names import GROUP
from epochserve.operators.rollouts import handlers as rollout_handlers
from epochserve.operators.rollouts.connect import default_connector

# kopf puts it on PolicyRollouts (delete handler) and EpochClusters (timer) alike.
FINALIZER = f"{GROUP}/operator"

# Imported for their registration side effect; listed so linters see them used.
REGISTERED_MODULES = (cluster_handlers, rollout_handlers)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator settings and the shared context; fails fast on a bad environment."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = FINALIZER
    api_client = load_api_client()
    memo.context = OperatorContext(
        config=OperatorConfig.from_env(),
        store=KubeObjectStore(api_client),
        api_client=api_client,
        connector=default_connector(),
    )
