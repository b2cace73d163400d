"""The kopf glue: which handlers exist, what they do with a spec, and the operator's entry point."""

from __future__ import annotations

import kopf
import pytest
from crd_schema_testkit import as_stored, example
from memory_store_testkit import InMemoryObjectStore

from epochserve.operators import handlers
from epochserve.operators.__main__ import build_parser
from epochserve.operators.cluster_handlers import reconcile_cluster
from epochserve.operators.config import OperatorConfig
from epochserve.operators.context import OperatorContext
from epochserve.operators.rollouts.connect import default_connector


def _handlers() -> dict[tuple[str, str | None], object]:
    registry = kopf.get_default_registry()
    found = {}
    for handler in [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]:
        reason = getattr(handler, "reason", None)
        found[(handler.selector.any_name, str(reason.value) if reason else None, handler.id)] = handler
    return found


def test_handlers_are_registered_for_both_kinds():
    assert handlers.REGISTERED_MODULES
    keys = {(plural, reason, handler_id) for plural, reason, handler_id in _handlers()}
    assert ("epochclusters", "create", "on_cluster_change") in keys
    assert ("epochclusters", "update", "on_cluster_change/spec") in keys
    assert ("epochclusters", None, "on_cluster_timer") in keys
    assert ("policyrollouts", None, "mirror_rollout") in keys
    assert ("policyrollouts", "delete", "abort_uncommitted") in keys


def test_rollout_delete_handler_puts_a_finalizer_on_policyrollouts():
    (delete,) = [
        h
        for (plural, reason, _), h in _handlers().items()
        if (plural, reason) == ("policyrollouts", "delete")
    ]
    assert delete.requires_finalizer is True  # type: ignore[attr-defined]


def _memo(store: InMemoryObjectStore) -> kopf.Memo:
    memo = kopf.Memo()
    config = OperatorConfig.from_env(
        {
            "EPOCHSERVE_OPERATOR_NAMESPACE": "epochserve",
            "EPOCHSERVE_MANAGED_ETCD_ENDPOINTS": "e-0:2379, e-1:2379",
        }
    )
    memo.context = OperatorContext(config=config, store=store, api_client=None, connector=default_connector())
    return memo


def test_reconcile_handler_applies_children_and_patches_status():
    store = InMemoryObjectStore()
    patch = kopf.Patch()
    reconcile_cluster(kopf.Body(as_stored(example("epochcluster.yaml"))), patch, _memo(store))
    assert len(store.objects) == 10
    assert patch["status"]["phase"] == "Progressing"
    assert patch["status"]["workerSelector"].endswith("app.kubernetes.io/component=worker")
    config = next(o for o in store.objects.values() if o["kind"] == "ConfigMap")
    assert config["data"]["etcd-endpoints"] == "e-0:2379,e-1:2379"


def test_reconcile_handler_turns_a_bad_spec_into_a_permanent_error():
    body = as_stored(example("epochcluster.yaml"), namespace="elsewhere")
    with pytest.raises(kopf.PermanentError, match="managed etcd serves namespace 'epochserve' only"):
        reconcile_cluster(kopf.Body(body), kopf.Patch(), _memo(InMemoryObjectStore()))


def test_operator_config_from_env():
    config = OperatorConfig.from_env(
        {
            "EPOCHSERVE_OPERATOR_NAMESPACE": "ops",
            "EPOCHSERVE_MANAGED_ETCD_ENDPOINTS": "a:1,b:2",
            "EPOCHSERVE_MANAGED_ETCD_TLS_SECRET": "tls",
        }
    )
    assert config.managed_etcd is not None
    assert (config.namespace, config.managed_etcd.endpoints, config.managed_etcd.tls_secret) == (
        "ops",
        ("a:1", "b:2"),
        "tls",
    )
    assert OperatorConfig.from_env({"EPOCHSERVE_OPERATOR_NAMESPACE": "ops"}).managed_etcd is None


def test_entry_point_arguments():
    args = build_parser().parse_args(["--namespace", "a", "--namespace", "b", "--liveness", ""])
    assert args.namespace == ["a", "b"] and args.liveness == ""
    assert build_parser().parse_args([]).namespace == []
