"""The TLS flags of a server command (`worker`, `router`, `coordinator`): --tls-cert, --tls-key and,
where clients must present certificates, --tls-ca. Their fields are a config's tls_cert_file,
tls_key_file and tls_client_ca_file; the router's ServerTls is made by `server_tls`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from epochserve.app.cli.config_flags import Flag
from epochserve.errors import ConfigError

if TYPE_CHECKING:  # imported lazily: `epochctl --help` stays light
    from epochserve.router.config import ServerTls


def server_tls_flags(cert_help: str, client_ca_help: str | None = None) -> tuple[Flag, ...]:
    """--tls-cert (its help says what it secures) and --tls-key; --tls-ca with `client_ca_help`."""
    flags = [
        Flag("tls-cert", cert_help, Path, metavar="FILE", field="tls_cert_file"),
        Flag("tls-key", "private key of --tls-cert", Path, metavar="FILE", field="tls_key_file"),
    ]
    if client_ca_help is not None:
        flags.append(Flag("tls-ca", client_ca_help, Path, metavar="FILE", field="tls_client_ca_file"))
    return tuple(flags)


def server_tls(args: argparse.Namespace) -> ServerTls | None:
    """The ServerTls of --tls-cert, --tls-key and --tls-ca (None without them); ConfigError when
    they do not fit together."""
    from epochserve.router.config import ServerTls

    ca = getattr(args, "tls_ca", None)
    if (args.tls_cert is None) != (args.tls_key is None) or (ca and not args.tls_cert):
        raise ConfigError("TLS: give --tls-cert and --tls-key together (and --tls-ca only with them)")
    return ServerTls(args.tls_cert, args.tls_key, ca) if args.tls_cert else None
