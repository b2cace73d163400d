"""`epochctl up`: a whole cluster on this machine — etcd, coordinator, workers, routers — until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("up", help="run a local cluster: etcd, coordinator, workers, router")
    parser.add_argument("--model", default="smollm2", help="Hugging Face model dir, or 'smollm2' (bundled)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (TP groups)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks per worker")
    parser.add_argument("--routers", type=int, default=1, help="router processes")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cluster", default="local", help="cluster name (etcd prefix)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="logs, etcd data, token (default: temp dir)"
    )
    parser.add_argument("--worker-arg", action="append", default=[], help="extra `epochctl worker` flag")
    parser.add_argument("--ready-file", type=Path, default=None, help="write the endpoints here (JSON)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from epochserve.controlplane.cli.worker_cmd import resolve_model
    from epochserve.controlplane.local_cluster import LocalCluster, LocalClusterSpec

    model_dir = resolve_model(args.model)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="epochserve-up-"))
    spec = LocalClusterSpec(
        model_dir=model_dir,
        workdir=workdir,
        num_workers=args.workers,
        tp=args.tp,
        device=args.device,
        cluster=args.cluster,
        num_routers=args.routers,
        worker_args=tuple(args.worker_arg),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = LocalCluster(spec)
    what = f"etcd, coordinator, {args.workers} worker(s) and {args.routers} router(s)"
    print(f"starting {what} in {workdir} ...", file=sys.stderr, flush=True)
    try:
        cluster.start()
        endpoints = describe(cluster, workdir)
        print(json.dumps(endpoints, indent=2), flush=True)
        if args.ready_file is not None:
            args.ready_file.write_text(json.dumps({**endpoints, "pid": _pid()}))
        print("cluster is up; Ctrl-C stops everything", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            restart_dead(cluster, workdir)
        return 0
    finally:
        print("stopping the cluster ...", file=sys.stderr, flush=True)
        cluster.stop()


def describe(cluster: object, workdir: Path) -> dict[str, object]:
    from epochserve.controlplane.local_cluster import LocalCluster

    assert isinstance(cluster, LocalCluster)
    token_file = workdir / "admin-token"
    token_file.write_text(cluster.token)
    token_file.chmod(0o600)
    return {
        "etcd": cluster.etcd_endpoint,
        "admin": cluster.admin_address,
        "admin_token_file": str(token_file),
        "routers": [r.address for r in cluster.routers],
        "workers": {w.info.get("worker_id", w.name): w.address for w in cluster.workers},
        "pids": pids(cluster),
        "cluster": cluster.spec.cluster,
        "workdir": str(workdir),
    }


def _pid() -> int:
    import os

    return os.getpid()


def restart_dead(cluster: object, workdir: Path) -> None:
    """Supervise: a worker or router that exited is started again (a worker first loads the
    committed version, then turns ready; a router takes its old port back)."""
    from epochserve.controlplane.local_cluster import LocalCluster

    assert isinstance(cluster, LocalCluster)
    restarted = False
    for index, worker in enumerate(cluster.workers):
        if not worker.is_running:
            print(f"{worker.name} exited ({worker.returncode}); restarting it", file=sys.stderr, flush=True)
            cluster.restart_worker(index)
            restarted = True
    for index, router in enumerate(cluster.routers):
        if not router.is_running:
            print(f"{router.name} exited ({router.returncode}); restarting it", file=sys.stderr, flush=True)
            cluster.restart_router(index)
            restarted = True
    if restarted:  # where the processes are now (WORKDIR/pids.json)
        (workdir / "pids.json").write_text(json.dumps(pids(cluster)))


def pids(cluster: object) -> dict[str, int | None]:
    from epochserve.controlplane.local_cluster import LocalCluster

    assert isinstance(cluster, LocalCluster)
    processes = [*cluster.workers, *cluster.routers]
    if cluster.coordinator is not None:
        processes.append(cluster.coordinator)
    out: dict[str, int | None] = {p.name: p.pid for p in processes}
    if cluster.etcd is not None:
        out["etcd"] = cluster.etcd.pid
    return out
