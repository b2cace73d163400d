"""`epochctl workers`: registered workers and routers, the committed epoch and the leader."""

from __future__ import annotations

import argparse
from typing import Any

from epochserve.controlplane.cli.admin_flags import (
    EXIT_OK,
    add_admin_flags,
    print_json,
    run_admin,
    timeout_of,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("workers", help="list registered workers and routers")
    add_admin_flags(p)
    p.set_defaults(func=_workers)


def _workers(args: argparse.Namespace) -> int:
    async def command(admin: Any) -> int:
        from epochserve.controlplane.cli.render import routers_table, workers_table

        reply = await admin.list_workers(timeout_of(args, waits=False))
        if args.json:
            print_json(reply)
            return EXIT_OK
        leader = f"{reply.leader_id} at {reply.leader_address}" if reply.leader_id else "none"
        print(f"committed epoch v{reply.committed_epoch}; leading coordinator: {leader}\n")
        print(workers_table(reply.workers))
        if reply.routers:
            print("\n" + routers_table(reply.routers))
        return EXIT_OK

    return run_admin(args, command)
