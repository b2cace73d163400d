"""Command-line flags that say how to reach etcd, shared by every `epochctl` process command."""

from __future__ import annotations

import argparse
from pathlib import Path

from epochserve.app.cli.config_flags import Flag, values
from epochserve.controlplane.store.etcd_config import EtcdConfig

ENDPOINTS_ENV = "EPOCHSERVE_ETCD_ENDPOINTS"


def etcd_flags(required: bool = True) -> tuple[Flag, ...]:
    """The "etcd" section: endpoints, TLS to etcd, timeout (EtcdConfig) and --cluster.

    required=False: a process that can also run without a control plane (a standalone worker).
    The endpoints default to $EPOCHSERVE_ETCD_ENDPOINTS (then never required), read when the
    parser is built."""
    etcd = "etcd"
    return (
        Flag(
            "etcd-endpoints",
            f"etcd client endpoints (default ${ENDPOINTS_ENV}); several must be IP addresses",
            required=required,
            env=ENDPOINTS_ENV,
            metavar="HOST:PORT[,...]",
            group=etcd,
        ),
        Flag(
            "etcd-ca",
            "CA of etcd's server certificate (enables TLS)",
            Path,
            None,
            "FILE",
            field="ca_file",
            group=etcd,
        ),
        Flag(
            "etcd-cert",
            "client certificate, when etcd requires one",
            Path,
            None,
            "FILE",
            field="cert_file",
            group=etcd,
        ),
        Flag("etcd-key", "private key of --etcd-cert", Path, None, "FILE", field="key_file", group=etcd),
        Flag(
            "etcd-timeout",
            "seconds per etcd request (5)",
            float,
            5.0,
            "S",
            field="request_timeout",
            group=etcd,
        ),
        Flag(
            "cluster", "cluster name: the etcd prefix /epochserve/<cluster>/", default="default", group=etcd
        ),
    )


def etcd_config(args: argparse.Namespace) -> EtcdConfig:
    """EtcdConfig from the flags; ConfigError when they do not fit together."""
    return EtcdConfig.parse(args.etcd_endpoints, **values(EtcdConfig, args, etcd_flags(required=False)))
