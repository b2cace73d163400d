"""What every Admin client command shares: flags, the client, JSON output and exit codes.

Exit codes: 0 success; 1 the call failed or the rollout ended ABORTED; 2 bad usage or settings
(argparse's own code); 3 a wait timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from epochserve.app.cli.cluster_flags import add_admin_connection_flags, admin_address, token_file
from epochserve.app.cli.exit_codes import EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE
from epochserve.controlplane.admin.auth import load_token
from epochserve.controlplane.admin.client import AdminClient
from epochserve.errors import ConfigError

CALL_TIMEOUT = 30.0  # seconds, default deadline of one call
WAIT_TIMEOUT = 900.0  # seconds, default limit of --wait / --watch


def add_admin_flags(parser: argparse.ArgumentParser, waits: bool = False) -> None:
    """The connection flags, --json and --timeout; `waits`: the command has --wait or --watch."""
    group = parser.add_argument_group("admin connection")
    add_admin_connection_flags(group)
    group.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    limit = f"per call (default {CALL_TIMEOUT:g})"
    if waits:
        limit += f", for --wait/--watch (default {WAIT_TIMEOUT:g})"
    group.add_argument("--timeout", type=float, metavar="S", help=f"seconds before giving up: {limit}")


def timeout_of(args: argparse.Namespace, waits: bool) -> float:
    if args.timeout is not None:
        return float(args.timeout)
    return WAIT_TIMEOUT if waits else CALL_TIMEOUT


def run_admin(args: argparse.Namespace, command: Callable[[AdminClient], Awaitable[int]]) -> int:
    """Connect with the flags, run `command`, and turn failures into messages and exit codes."""

    async def main() -> int:
        async with AdminClient(
            admin_address(args), load_token(token_file(args)), tls=args.tls, ca_file=args.ca
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
    """Field names as in the proto and every field, like the text: 64-bit integers as numbers (proto's
    JSON mapping writes them as strings) and enums by their short lowercase names (WORKER_STATUS_READY
    is "ready")."""
    body = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _plain(message.DESCRIPTOR, body)


def _plain(descriptor: Descriptor, body: dict[str, Any]) -> dict[str, Any]:
    for field in descriptor.fields:
        if field.name not in body:
            continue
        values = body[field.name] if field.is_repeated else [body[field.name]]
        if field.message_type is not None:
            values = [_plain(field.message_type, v) for v in values]
        elif field.enum_type is not None:
            prefix = _upper_snake(field.enum_type.name) + "_"
            values = [v.removeprefix(prefix).lower() for v in values]
        elif field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
            values = [int(v) for v in values]
        body[field.name] = values if field.is_repeated else values[0]
    return body


def _upper_snake(name: str) -> str:
    """RolloutPhase → ROLLOUT_PHASE, the prefix of its values."""
    return "".join(f"_{c}" if c.isupper() and i else c for i, c in enumerate(name)).upper()
