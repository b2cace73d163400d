"""`epochctl router`: run one router (the public Generation service). Run several side by side.

Exit code 0 after a clean stop (SIGTERM/SIGINT), 1 when the control plane cannot be followed,
2 for bad settings.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epochserve.app.cli.etcd_flags import add_etcd_flags, etcd_config
from epochserve.errors import ConfigError

if TYPE_CHECKING:  # imported lazily: `epochctl --help` stays light
    from epochserve.router.config import RouterConfig

POLICY_NAMES = ("least-tokens", "prefix-affinity", "round-robin")  # router/policies (checked in config)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("router", help="run a router: the public Generation service")
    add_etcd_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=50050, help="gRPC port (50050; 0 picks a free one)")
    p.add_argument("--advertise-address", default="", metavar="HOST:PORT", help="registered address")
    p.add_argument("--router-id", default="", help="router id in etcd (default HOSTNAME:PORT)")
    p.add_argument(
        "--metrics-port", type=int, default=None, help="Prometheus port (0: a free one; off if unset)"
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="interface of the Prometheus endpoint")
    p.add_argument("--policy", choices=POLICY_NAMES, default="least-tokens", help="balancing policy")
    p.add_argument("--max-queue", type=int, default=1024, help="requests waiting per version (1024)")
    p.add_argument(
        "--max-wait", type=float, default=120.0, metavar="S", help="longest wait without a deadline"
    )
    p.add_argument(
        "--retry-after", type=float, default=1.0, metavar="S", help="retry hint when the queue is full"
    )
    p.add_argument("--max-attempts", type=int, default=3, help="workers one request may be started on (3)")
    p.add_argument(
        "--max-seqs-per-worker",
        type=int,
        default=0,
        help="sequences in flight per worker before queueing (0: no bound)",
    )
    p.add_argument(
        "--audit-log", type=Path, metavar="FILE", help="append one JSON line per completed response"
    )
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate (TLS for clients)")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="private key of --tls-cert")
    p.add_argument(
        "--tls-ca", type=Path, metavar="FILE", help="CA of client certificates (requires mutual TLS)"
    )
    p.add_argument(
        "--worker-tls-ca", type=Path, metavar="FILE", help="dial workers over TLS, trusting this CA"
    )
    p.add_argument(
        "--no-session-link",
        action="store_true",
        help="reach workers over gRPC Session even where they serve a session link (comparisons)",
    )
    p.add_argument("--lease-ttl", type=int, default=10, metavar="S", help="registration lease TTL (10)")
    p.add_argument(
        "--drain-seconds", type=float, default=30.0, help="grace for requests in flight at shutdown"
    )
    p.add_argument(
        "--ready-file", type=Path, metavar="FILE", help="write {host, port, metrics_port, ...} when serving"
    )
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> RouterConfig:
    """RouterConfig from the flags; ConfigError for settings that do not fit together."""
    from epochserve.channels import ClientTls
    from epochserve.router.admission import QueueLimits
    from epochserve.router.config import RouterConfig, ServerTls

    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_ca and not args.tls_cert):
        raise ConfigError("TLS: give --tls-cert and --tls-key together (and --tls-ca only with them)")
    try:
        queue = QueueLimits(args.max_queue, args.max_wait, args.retry_after)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return RouterConfig(
        etcd=etcd_config(args),
        cluster=args.cluster,
        host=args.host,
        port=args.port,
        advertise_address=args.advertise_address,
        router_id=args.router_id,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        policy=args.policy,
        queue=queue,
        max_attempts=args.max_attempts,
        max_seqs_per_worker=args.max_seqs_per_worker,
        audit_log=args.audit_log,
        tls=ServerTls(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None,
        worker_tls=ClientTls(ca_file=args.worker_tls_ca) if args.worker_tls_ca else None,
        use_session_link=not args.no_session_link,
        lease_ttl=args.lease_ttl,
        drain_seconds=args.drain_seconds,
        ready_file=args.ready_file,
    )


def run(args: argparse.Namespace) -> int:
    from epochserve.router.server import run as serve_router

    return serve_router(build_config(args))  # a ConfigError is main's: one line, exit 2
