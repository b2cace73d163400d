"""`epochctl workers`: registered workers and routers, the committed epoch and the leader."""

from __future__ import annotations

import argparse
from typing import Any

from epochserve.app.cli.admin_flags import add_admin_flags, emit, run_admin, timeout_of
from epochserve.app.cli.exit_codes import EXIT_OK


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("workers", help="list registered workers and routers")
    add_admin_flags(p)
    p.set_defaults(func=_workers)


def _workers(args: argparse.Namespace) -> int:
    async def command(admin: Any) -> int:
        reply = await admin.list_workers(timeout_of(args, waits=False))
        emit(args, reply, lambda: _as_text(reply))
        return EXIT_OK

    return run_admin(args, command)


def _as_text(reply: Any) -> str:
    from epochserve.app.cli.render import routers_table, workers_table

    leader = f"{reply.leader_id} at {reply.leader_address}" if reply.leader_id else "none"
    parts = [
        f"committed epoch v{reply.committed_epoch}; leading coordinator: {leader}",
        workers_table(reply.workers),
    ]
    if reply.routers:
        parts.append(routers_table(reply.routers))
    return "\n\n".join(parts)
