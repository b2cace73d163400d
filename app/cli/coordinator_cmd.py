"""`epochctl coordinator`: run one coordinator replica (Admin server + election + rollout driver).

Runs until SIGTERM or SIGINT, then steps down (revoking its lease, so a standby leads at once).
Exit code 0 after a clean stop, 2 for bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epochserve.app.cli.etcd_flags import add_etcd_flags, etcd_config

if TYPE_CHECKING:  # the config module pulls in the store layer; `--help` should not
    from epochserve.controlplane.coordinator.config import CoordinatorConfig

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("coordinator", help="run a rollout coordinator (run several: one leads)")
    add_etcd_flags(p)
    p.add_argument("--admin-host", default="127.0.0.1", help="interface of the Admin service (127.0.0.1)")
    p.add_argument("--admin-port", type=int, default=7070, help="port of the Admin service (7070)")
    p.add_argument("--advertise-address", metavar="HOST:PORT", help="where peers reach this Admin service")
    p.add_argument(
        "--token-file", type=Path, metavar="FILE", help="admin bearer token (else $EPOCHSERVE_ADMIN_TOKEN)"
    )
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="Admin TLS certificate (TLS only when set)")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="private key of --tls-cert")
    p.add_argument(
        "--peer-ca", type=Path, metavar="FILE", help="CA of peer coordinators' certs (default --tls-cert)"
    )
    p.add_argument("--id", dest="coordinator_id", help="coordinator id (default HOST-PID)")
    p.add_argument("--lease-ttl", type=int, default=10, metavar="S", help="leader lease TTL in seconds (10)")
    p.add_argument("--stage-timeout", type=float, default=600.0, metavar="S", help="STAGING timeout (600 s)")
    p.add_argument(
        "--commit-timeout", type=float, default=300.0, metavar="S", help="COMMITTED timeout (300 s)"
    )
    p.add_argument(
        "--ready-file", type=Path, metavar="FILE", help="write {host, port, pid} here once serving"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from epochserve.controlplane.admin.auth import load_token
    from epochserve.controlplane.coordinator.config import CoordinatorConfig

    optional = {"coordinator_id": args.coordinator_id} if args.coordinator_id else {}
    config = CoordinatorConfig(
        cluster=args.cluster,
        etcd=etcd_config(args),
        token=load_token(args.token_file),
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        advertise_address=args.advertise_address,
        tls_cert_file=args.tls_cert,
        tls_key_file=args.tls_key,
        peer_ca_file=args.peer_ca,
        lease_ttl=args.lease_ttl,
        stage_timeout=args.stage_timeout,
        commit_timeout=args.commit_timeout,
        **optional,
    )
    return asyncio.run(serve(config, args.ready_file))  # a ConfigError is main's: one line, exit 2


async def serve(config: CoordinatorConfig, ready_file: Path | None = None) -> int:
    """Serve Admin and coordinate until SIGTERM/SIGINT."""
    from epochserve.controlplane.admin.server import start_admin_server
    from epochserve.controlplane.coordinator.process import Coordinator

    coordinator = Coordinator(config)
    server = await start_admin_server(coordinator)
    log.info(
        "coordinator %s: Admin on %s, cluster %s", config.coordinator_id, config.admin_address, config.cluster
    )
    if ready_file is not None:
        ready = {"host": config.admin_host, "port": config.admin_port, "pid": os.getpid()}
        ready_file.write_text(json.dumps({**ready, "coordinator_id": config.coordinator_id}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await coordinator.run(stop)
    finally:
        await server.stop(grace=1.0)
    log.info("coordinator %s stopped", config.coordinator_id)
    return 0
