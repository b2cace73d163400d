"""What the kopf handlers share, built once at operator startup and kept in kopf's memo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from epochserve.operators.config import OperatorConfig
from epochserve.operators.reconcile import ObjectStore
from epochserve.operators.rollouts.admin import AdminConnector


@dataclass(frozen=True, slots=True)
class OperatorContext:
    """config: from the environment; store: children via the API server; api_client: the
    kubernetes client (Secrets, custom-object status); connector: opens Admin API sessions."""

    config: OperatorConfig
    store: ObjectStore
    api_client: Any
    connector: AdminConnector


def context_of(memo: Any) -> OperatorContext:
    """The context the startup handler put into kopf's memo."""
    context: OperatorContext = memo.context
    return context
