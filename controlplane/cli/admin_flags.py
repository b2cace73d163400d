"""What every Admin client command shares: flags, the client, JSON output and exit codes.

Exit codes: 0 success; 1 the call failed or the rollout ended ABORTED; 2 bad usage or settings
(argparse's own code); 3 a wait timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from epochserve.controlplane.admin.auth import load_token
from epochserve.controlplane.admin.client import AdminClient
from epochserve.errors import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
ADMIN_ENV = "EPOCHSERVE_ADMIN"
CALL_TIMEOUT = 30.0  # seconds, default deadline of one call
WAIT_TIMEOUT = 900.0  # seconds, default limit of --wait / --watch


def add_admin_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("admin connection")
    group.add_argument(
        "--admin",
        default=os.environ.get(ADMIN_ENV, "127.0.0.1:7070"),
        metavar="HOST:PORT",
        help=f"a coordinator's Admin address (default ${ADMIN_ENV} or 127.0.0.1:7070)",
    )
    group.add_argument(
        "--token-file", type=Path, metavar="FILE", help="bearer token (else $EPOCHSERVE_ADMIN_TOKEN)"
    )
    group.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA of the coordinator's certificate (enables TLS)"
    )
    group.add_argument("--tls", action="store_true", help="use TLS trusting the system's CAs")
    group.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    group.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help=f"seconds before giving up: per call ({CALL_TIMEOUT:g}), for --wait/--watch ({WAIT_TIMEOUT:g})",
    )


def timeout_of(args: argparse.Namespace, waits: bool) -> float:
    if args.timeout is not None:
        return float(args.timeout)
    return WAIT_TIMEOUT if waits else CALL_TIMEOUT


def run_admin(args: argparse.Namespace, command: Callable[[AdminClient], Awaitable[int]]) -> int:
    """Connect with the flags, run `command`, and turn failures into messages and exit codes."""

    async def main() -> int:
        async with AdminClient(
            args.admin, load_token(args.token_file), tls=args.tls, ca_file=args.ca
        ) as admin:
            return await command(admin)

    try:
        return asyncio.run(main())
    except ConfigError as e:
        print(f"epochctl: {e}", file=sys.stderr)
        return EXIT_USAGE
    except grpc.aio.AioRpcError as e:
        print(f"epochctl: {e.code().name}: {e.details()}", file=sys.stderr)
        return EXIT_TIMEOUT if e.code() is grpc.StatusCode.DEADLINE_EXCEEDED else EXIT_FAILED


def emit(args: argparse.Namespace, message: Message, text: Callable[[], str]) -> None:
    """Print `message` as JSON under --json, else the text `text()` renders."""
    if args.json:
        print_json(message)
    else:
        print(text(), flush=True)


def print_json(message: Message | dict[str, Any]) -> None:
    """One JSON object on one line (field names as in the proto, enums by name, all fields)."""
    body = message if isinstance(message, dict) else as_dict(message)
    print(json.dumps(body, sort_keys=True), flush=True)


def as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
