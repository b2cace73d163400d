"""Command-line flags that say how to reach etcd, shared by every `epochctl` process command."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from epochserve.controlplane.store.etcd_config import EtcdConfig

ENDPOINTS_ENV = "EPOCHSERVE_ETCD_ENDPOINTS"


def add_etcd_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """required=False: a process that can also run without a control plane (a standalone worker)."""
    group = parser.add_argument_group("etcd")
    group.add_argument(
        "--etcd-endpoints",
        default=os.environ.get(ENDPOINTS_ENV),
        required=required and ENDPOINTS_ENV not in os.environ,
        metavar="HOST:PORT[,...]",
        help=f"etcd client endpoints (default ${ENDPOINTS_ENV}); several must be IP addresses",
    )
    group.add_argument(
        "--etcd-ca", type=Path, metavar="FILE", help="CA of etcd's server certificate (enables TLS)"
    )
    group.add_argument(
        "--etcd-cert", type=Path, metavar="FILE", help="client certificate, when etcd requires one"
    )
    group.add_argument("--etcd-key", type=Path, metavar="FILE", help="private key of --etcd-cert")
    group.add_argument(
        "--etcd-timeout", type=float, default=5.0, metavar="S", help="seconds per etcd request (5)"
    )
    group.add_argument(
        "--cluster", default="default", help="cluster name: the etcd prefix /epochserve/<cluster>/"
    )


def etcd_config(args: argparse.Namespace) -> EtcdConfig:
    """EtcdConfig from the flags; ConfigError when they do not fit together."""
    return EtcdConfig.parse(
        args.etcd_endpoints,
        ca_file=args.etcd_ca,
        cert_file=args.etcd_cert,
        key_file=args.etcd_key,
        request_timeout=args.etcd_timeout,
    )
