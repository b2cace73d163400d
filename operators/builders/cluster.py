"""Every object an EpochCluster owns, in the order they are best created."""

from __future__ import annotations

from epochserve.operators.builders.common import Manifest
from epochserve.operators.builders.config import config_map, content_hash
from epochserve.operators.builders.tiers import coordinator_objects, router_objects
from epochserve.operators.builders.worker import worker_objects
from epochserve.operators.names import SPEC_HASH_ANNOTATION
from epochserve.operators.spec import ClusterSpec


def stamp_spec_hash(manifest: Manifest) -> Manifest:
    """Return a copy carrying a digest of itself in metadata.annotations[SPEC_HASH_ANNOTATION].

    The API server adds defaults to what it stores, so comparing stored and desired objects field by
    field would see changes that are not there; comparing this digest sees exactly ours.
    """
    digest = content_hash(manifest)
    metadata = dict(manifest["metadata"])
    metadata["annotations"] = {**metadata.get("annotations", {}), SPEC_HASH_ANNOTATION: digest}
    return {**manifest, "metadata": metadata}


def build_cluster(spec: ClusterSpec) -> list[Manifest]:
    """Desired state of a cluster: ConfigMap first (pods read it), coordinators before workers."""
    objects = [config_map(spec), *coordinator_objects(spec), *router_objects(spec), *worker_objects(spec)]
    return [stamp_spec_hash(obj) for obj in objects]
