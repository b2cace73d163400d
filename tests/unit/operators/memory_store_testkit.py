"""ObjectStore kept in a dict, with the API server behaviour reconcile depends on: objects keyed by
(apiVersion, kind, namespace, name), listing by labels, a resourceVersion bumped on every write,
and server-added fields (status, defaults) that the desired objects never carry."""

from __future__ import annotations

import copy
from typing import Any

from epochserve.operators.reconcile import ObjectKey

Manifest = dict[str, Any]


class InMemoryObjectStore:
    def __init__(self) -> None:
        self.objects: dict[ObjectKey, Manifest] = {}
        self.writes: list[tuple[str, ObjectKey]] = []
        self._revision = 0

    def list_owned(self, namespace: str, labels: dict[str, str]) -> list[Manifest]:
        found = []
        for key, obj in sorted(self.objects.items()):
            carried = obj["metadata"].get("labels") or {}
            if key.namespace == namespace and all(carried.get(k) == v for k, v in labels.items()):
                found.append(copy.deepcopy(obj))
        return found

    def apply(self, manifest: Manifest) -> None:
        key = ObjectKey.of(manifest)
        self._revision += 1
        stored = copy.deepcopy(manifest)
        previous = self.objects.get(key)
        # Like the API server: keep status, add a field the builders never set.
        stored["status"] = copy.deepcopy(previous["status"]) if previous else {}
        stored["metadata"]["resourceVersion"] = str(self._revision)
        stored["metadata"]["generation"] = (previous or {}).get("metadata", {}).get("generation", 0) + 1
        stored["metadata"].setdefault("creationTimestamp", "2026-11-22T00:00:00Z")
        self.objects[key] = stored
        self.writes.append(("apply", key))

    def delete(self, key: ObjectKey) -> None:
        del self.objects[key]
        self.writes.append(("delete", key))

    def put_foreign(self, manifest: Manifest) -> None:
        """An object someone else created (not through apply)."""
        self.objects[ObjectKey.of(manifest)] = copy.deepcopy(manifest)
