"""Level-based reconcile: desired objects vs. the ones that exist, and only the difference applied.

`plan` is pure: given the builders' output and what the API server holds, it returns the actions
that make the latter match the former. Running it again after its actions were applied returns no
action (each desired object carries a digest of itself, see builders.cluster.stamp_spec_hash).
Existing objects are only ever deleted when this cluster is their controller owner, so objects a
person created with the same labels are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from epochserve.operators.names import SPEC_HASH_ANNOTATION

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]

# (apiVersion, kind) of every object kind an EpochCluster owns, in creation order.
MANAGED_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
)


@dataclass(frozen=True, slots=True, order=True)
class ObjectKey:
    """Identity of a namespaced object."""

    api_version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, manifest: Manifest) -> ObjectKey:
        meta = manifest["metadata"]
        return cls(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])


class Verb(Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Action:
    """One change to make; `manifest` is the full desired object (None for DELETE)."""

    verb: Verb
    key: ObjectKey
    manifest: Manifest | None


class ObjectStore(Protocol):
    """What reconcile needs from the API server (kube_store.KubeObjectStore in production).

    Failure modes: any method may raise when the API server is unreachable or refuses; the caller
    retries the whole reconcile, which is safe because applying a desired object is idempotent.
    """

    def list_owned(self, namespace: str, labels: dict[str, str]) -> list[Manifest]:
        """Objects of MANAGED_KINDS in `namespace` carrying all of `labels`, as plain dicts."""
        ...

    def apply(self, manifest: Manifest) -> None:
        """Create or update `manifest` so the stored object has exactly the fields we set."""
        ...

    def delete(self, key: ObjectKey) -> None:
        """Delete an object (its dependents are garbage-collected in the background)."""
        ...


def _spec_hash(manifest: Manifest) -> str | None:
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    value = annotations.get(SPEC_HASH_ANNOTATION)
    return None if value is None else str(value)


def _controlled_by(manifest: Manifest, owner_uid: str) -> bool:
    refs = manifest.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner_uid and ref.get("controller") for ref in refs)


def plan(desired: Sequence[Manifest], existing: Iterable[Manifest], owner_uid: str) -> list[Action]:
    """Actions that turn `existing` into `desired`; [] when they already match.

    CREATE for desired objects that do not exist, UPDATE for those whose stored digest differs,
    DELETE for objects this owner controls that are no longer desired. Deletions come last so that
    a replacement (e.g. a renamed Service) exists before the old one goes.
    """
    current = {ObjectKey.of(obj): obj for obj in existing}
    actions: list[Action] = []
    for manifest in desired:
        key = ObjectKey.of(manifest)
        stored = current.get(key)
        if stored is None:
            actions.append(Action(Verb.CREATE, key, manifest))
        elif _spec_hash(stored) != _spec_hash(manifest):
            actions.append(Action(Verb.UPDATE, key, manifest))
    wanted = {ObjectKey.of(obj) for obj in desired}
    stale = sorted(k for k, obj in current.items() if k not in wanted and _controlled_by(obj, owner_uid))
    actions.extend(Action(Verb.DELETE, key, None) for key in stale)
    return actions


def apply_plan(store: ObjectStore, actions: Sequence[Action]) -> None:
    """Carry out `actions` in order; stops at the first failure (the next reconcile resumes)."""
    for action in actions:
        logger.info("%s %s %s/%s", action.verb.value, action.key.kind, action.key.namespace, action.key.name)
        if action.manifest is None:
            store.delete(action.key)
        else:
            store.apply(action.manifest)


def reconcile(
    store: ObjectStore, desired: Sequence[Manifest], namespace: str, labels: dict[str, str], owner_uid: str
) -> tuple[list[Action], list[Manifest]]:
    """List what exists, apply the plan; return (actions taken, objects listed before acting)."""
    existing = store.list_owned(namespace, labels)
    actions = plan(desired, existing, owner_uid)
    apply_plan(store, actions)
    return actions, existing
