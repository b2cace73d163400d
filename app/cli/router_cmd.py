"""`epochctl router`: run one router (the public Generation service). Run several side by side.

Exit code 0 after a clean stop (SIGTERM/SIGINT), 1 when the control plane cannot be followed,
2 for bad settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epochserve.app.cli.config_flags import Flag, add_command, build
from epochserve.app.cli.etcd_flags import etcd_config, etcd_flags
from epochserve.app.cli.tls_flags import server_tls, server_tls_flags
from epochserve.errors import ConfigError

if TYPE_CHECKING:  # imported lazily: `epochctl --help` stays light
    from epochserve.router.config import RouterConfig

POLICY_NAMES = ("least-tokens", "prefix-affinity", "round-robin")  # router/policies (checked in config)

# The flags in --help's order: fields of RouterConfig, of its QueueLimits (--max-queue, --max-wait,
# --retry-after) and of its TLS settings (server_tls, --worker-tls-ca).
ROUTER_FLAGS: tuple[Flag, ...] = (
    *etcd_flags(),
    Flag("host", "interface to listen on (127.0.0.1)", default="127.0.0.1"),
    Flag("port", "gRPC port (50050; 0 picks a free one)", int, 50050),
    Flag("advertise-address", "registered address", default="", metavar="HOST:PORT"),
    Flag("router-id", "router id in etcd (default HOSTNAME:PORT)", default=""),
    Flag("metrics-port", "Prometheus port (0: a free one; off if unset)", int),
    Flag("metrics-host", "interface of the Prometheus endpoint", default="127.0.0.1"),
    Flag("policy", "balancing policy", default="least-tokens", choices=POLICY_NAMES),
    Flag("max-queue", "requests waiting per version (1024)", int, 1024),
    Flag("max-wait", "longest wait without a deadline", float, 120.0, "S", field="max_wait_seconds"),
    Flag("retry-after", "retry hint when the queue is full", float, 1.0, "S", field="retry_after_seconds"),
    Flag("max-attempts", "workers one request may be started on (3)", int, 3),
    Flag("max-seqs-per-worker", "sequences in flight per worker before queueing (0: no bound)", int, 0),
    Flag("audit-log", "append one JSON line per completed response", Path, metavar="FILE"),
    *server_tls_flags(
        "server certificate (TLS for clients)", "CA of client certificates (requires mutual TLS)"
    ),
    Flag("worker-tls-ca", "dial workers over TLS, trusting this CA", Path, metavar="FILE"),
    Flag(
        "no-session-link",
        "reach workers over gRPC Session even where they serve a session link (comparisons)",
        negate=True,
        field="use_session_link",
    ),
    Flag("lease-ttl", "registration lease TTL (10)", int, 10, "S"),
    Flag("drain-seconds", "grace for requests in flight at shutdown", float, 30.0),
    Flag("ready-file", "write {host, port, metrics_port, http_port, ...} when serving", Path, metavar="FILE"),
    Flag("http-port", "OpenAI-compatible HTTP front, docs/http.md (0: a free one; off if unset)", int),
    Flag("tokenizer", "model dir of the HTTP front's tokenizer and chat template", Path, metavar="DIR"),
    Flag("model-name", "the model's name on the HTTP front (default: the tokenizer dir's name)", default=""),
    Flag("api-key-file", "HTTP clients must send Authorization: Bearer <its contents>", Path, metavar="FILE"),
    Flag(
        "http-max-body",
        "HTTP request bodies above this get 413",
        int,
        4 * 2**20,
        "BYTES",
        field="http_max_body_bytes",
    ),
    Flag(
        "http-processes",
        "processes serving the HTTP front on --http-port (1: inside the router; N > 1: N of their own)",
        int,
        1,
        "N",
    ),
    Flag(
        "admin-address", "Admin service for POST /update_weights_from_disk", default="", metavar="HOST:PORT"
    ),
    Flag("admin-token-file", "its bearer token (else $EPOCHSERVE_ADMIN_TOKEN)", Path, metavar="FILE"),
)


def register(subparsers: Any) -> None:
    add_command(subparsers, "router", "run a router: the public Generation service", ROUTER_FLAGS, run)


def build_config(args: argparse.Namespace) -> RouterConfig:
    """RouterConfig from the flags; ConfigError for settings that do not fit together."""
    from epochserve.channels import ClientTls
    from epochserve.router.admission import QueueLimits
    from epochserve.router.config import RouterConfig

    tls = server_tls(args)
    try:
        queue = build(QueueLimits, args, ROUTER_FLAGS)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return build(
        RouterConfig,
        args,
        ROUTER_FLAGS,
        etcd=etcd_config(args),
        queue=queue,
        tls=tls,
        worker_tls=ClientTls(ca_file=args.worker_tls_ca) if args.worker_tls_ca else None,
    )


def run(args: argparse.Namespace) -> int:
    from epochserve.router.server import run as serve_router

    return serve_router(build_config(args))  # a ConfigError is main's: one line, exit 2
