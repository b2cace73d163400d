"""A local cluster whose routers serve the HTTP front (with the model directory's tokenizer and the
Admin address), and the root URL of its first router's front: what the HTTP tests share."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from routerkit import cluster_spec

from epochserve.app.local.cluster import LocalCluster


@contextmanager
def http_cluster(workdir: Path, model_dir: Path) -> Iterator[LocalCluster]:
    """One worker, one router with `--http-port 0 --tokenizer model_dir --admin-address ...`."""
    spec = dataclasses.replace(cluster_spec(workdir, model_dir, num_workers=1), http_front=True)
    with LocalCluster(spec) as running:
        yield running


def front_url(cluster: LocalCluster, router: int = 0) -> str:
    info = cluster.routers[router].info
    return f"http://{info['host']}:{info['http_port']}"
