"""How a command finds its cluster: router and Admin addresses and the admin token file.

Each is taken, first found: the flag itself; the cluster that `--up FILE` names (the ready file of
`epochctl up --ready-file FILE`, or $EPOCHSERVE_UP); the EPOCHSERVE_* variable that `epochctl up`
prints as an export line; the built-in default, which fits a cluster started by hand with each
server's default port.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from epochserve.errors import ConfigError

UP_ENV = "EPOCHSERVE_UP"
ROUTER_ENV = "EPOCHSERVE_ROUTER"
ADMIN_ENV = "EPOCHSERVE_ADMIN"
TOKEN_FILE_ENV = "EPOCHSERVE_ADMIN_TOKEN_FILE"
DEFAULT_ROUTER = "127.0.0.1:50050"  # `epochctl router`'s default port
DEFAULT_ADMIN = "127.0.0.1:7070"  # `epochctl coordinator`'s default Admin port
ORDER = "flag, then --up, then ${env}, then {default}"


def add_up_flag(parser: argparse.ArgumentParser | Any) -> None:
    parser.add_argument(
        "--up",
        type=Path,
        metavar="FILE",
        help=f"the ready file of `epochctl up --ready-file FILE`: its router, admin and token are the "
        f"defaults of the flags here (default ${UP_ENV})",
    )


def add_router_flag(
    parser: argparse.ArgumentParser | Any, name: str = "--target", what: str = "a router"
) -> None:
    parser.add_argument(
        name,
        metavar="HOST:PORT",
        help=f"{what}; default: " + ORDER.format(env=ROUTER_ENV, default=DEFAULT_ROUTER),
    )


def add_admin_connection_flags(group: argparse.ArgumentParser | Any) -> None:
    """--admin, --token-file, --ca, --tls (and --up) for a command that calls the Admin service."""
    add_up_flag(group)
    group.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="a coordinator's Admin address; default: " + ORDER.format(env=ADMIN_ENV, default=DEFAULT_ADMIN),
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"bearer token; default: flag, then --up, then ${TOKEN_FILE_ENV}, then $EPOCHSERVE_ADMIN_TOKEN",
    )
    group.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA of the coordinator's certificate (enables TLS)"
    )
    group.add_argument("--tls", action="store_true", help="use TLS trusting the system's CAs")


def router_address(args: argparse.Namespace, flag: str = "target") -> str:
    return _pick(getattr(args, flag, None), _up(args), "routers", ROUTER_ENV, DEFAULT_ROUTER)


def admin_address(args: argparse.Namespace) -> str:
    return _pick(args.admin, _up(args), "admin", ADMIN_ENV, DEFAULT_ADMIN)


def token_file(args: argparse.Namespace) -> Path | None:
    """The token file to read, or None to fall back on $EPOCHSERVE_ADMIN_TOKEN (admin/auth.py)."""
    found = _pick(args.token_file, _up(args), "admin_token_file", TOKEN_FILE_ENV, "")
    return Path(found) if found else None


def _pick(flag: Any, up: dict[str, Any] | None, key: str, env: str, default: str) -> str:
    if flag:
        return str(flag)
    if up is not None and up.get(key):
        value = up[key]
        return str(value[0] if isinstance(value, list) else value)
    return os.environ.get(env) or default


def _up(args: argparse.Namespace) -> dict[str, Any] | None:
    path = getattr(args, "up", None) or os.environ.get(UP_ENV)
    if not path:
        return None
    try:
        info = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--up {path}: cannot read it ({exc.strerror}); is the cluster up?") from None
    except ValueError:
        raise ConfigError(f"--up {path}: not a ready file of `epochctl up`") from None
    if not isinstance(info, dict):
        raise ConfigError(f"--up {path}: not a ready file of `epochctl up`")
    return info
