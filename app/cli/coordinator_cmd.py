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

from epochserve.app.cli.config_flags import Flag, add_command, build
from epochserve.app.cli.etcd_flags import etcd_config, etcd_flags
from epochserve.app.cli.tls_flags import server_tls_flags

if TYPE_CHECKING:  # the config module pulls in the store layer; `--help` should not
    from epochserve.controlplane.coordinator.config import CoordinatorConfig

log = logging.getLogger(__name__)

# The flags in --help's order: fields of CoordinatorConfig but --token-file (read into its token)
# and --ready-file.
COORDINATOR_FLAGS: tuple[Flag, ...] = (
    *etcd_flags(),
    Flag("admin-host", "interface of the Admin service (127.0.0.1)", default="127.0.0.1"),
    Flag("admin-port", "port of the Admin service (7070)", int, 7070),
    Flag("advertise-address", "where peers reach this Admin service", metavar="HOST:PORT"),
    Flag("token-file", "admin bearer token (else $EPOCHSERVE_ADMIN_TOKEN)", Path, metavar="FILE"),
    *server_tls_flags("Admin TLS certificate (TLS only when set)"),
    Flag(
        "peer-ca",
        "CA of peer coordinators' certs (default --tls-cert)",
        Path,
        metavar="FILE",
        field="peer_ca_file",
    ),
    Flag("id", "coordinator id (default HOST-PID)", dest="coordinator_id", blank_is_unset=True),
    Flag("lease-ttl", "leader lease TTL in seconds (10)", int, 10, "S"),
    Flag("stage-timeout", "STAGING timeout (600 s)", float, 600.0, "S"),
    Flag("commit-timeout", "COMMITTED timeout (300 s)", float, 300.0, "S"),
    Flag("ready-file", "write {host, port, pid} here once serving", Path, metavar="FILE"),
)


def register(subparsers: Any) -> None:
    what = "run a rollout coordinator (run several: one leads)"
    add_command(subparsers, "coordinator", what, COORDINATOR_FLAGS, run)


def run(args: argparse.Namespace) -> int:
    from epochserve.controlplane.admin.auth import load_token
    from epochserve.controlplane.coordinator.config import CoordinatorConfig

    etcd = etcd_config(args)
    config = build(CoordinatorConfig, args, COORDINATOR_FLAGS, etcd=etcd, token=load_token(args.token_file))
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
