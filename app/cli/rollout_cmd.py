"""`epochctl rollout start|status|abort|list`: operate weight-update rollouts through a coordinator.

    rollout start --version V --source PATH|nccl --drain finish|abort|overlap [--drain-deadline S] [--wait]
                                exit 0 when started (with --wait: when DONE), 1 if it ends ABORTED
    rollout status V [--watch]  per-worker progress; --watch follows it until DONE (0) / ABORTED (1)
    rollout abort V             only before the commit (1 with FAILED_PRECONDITION after it)
    rollout list                every rollout, newest first
Waits end with exit code 3 after --timeout seconds. See admin_flags.py for the shared flags.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from epochserve.app.cli.admin_flags import add_admin_flags, emit, print_json, run_admin, timeout_of
from epochserve.app.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("rollout", help="start, follow, abort and list weight-update rollouts")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    start = verbs.add_parser("start", help="start rolling out a new policy version")
    start.add_argument("--version", type=int, required=True, help="the version: above every version so far")
    start.add_argument("--source", required=True, help="checkpoint path every worker can read, or 'nccl'")
    start.add_argument(
        "--drain",
        choices=("finish", "abort", "overlap"),
        required=True,
        help="what happens to v-1 requests (overlap: they finish while v requests start beside them)",
    )
    start.add_argument(
        "--drain-deadline",
        type=float,
        metavar="S",
        help="v-1 requests still running S seconds after the commit end with ABORT (< commit timeout)",
    )
    start.add_argument("--manifest-checksum", help="expected manifest checksum (default: workers must agree)")
    start.add_argument(
        "--stage-timeout", type=float, metavar="S", help="STAGING timeout (coordinator default)"
    )
    start.add_argument(
        "--commit-timeout", type=float, metavar="S", help="COMMITTED timeout (coordinator default)"
    )
    start.add_argument("--wait", action="store_true", help="follow the rollout until DONE or ABORTED")
    start.set_defaults(func=_start)
    status = verbs.add_parser("status", help="a rollout's per-worker progress")
    status.add_argument("version", type=int)
    status.add_argument("--watch", action="store_true", help="follow it live until DONE or ABORTED")
    status.set_defaults(func=_status)
    abort = verbs.add_parser("abort", help="abort a rollout that has not committed")
    abort.add_argument("version", type=int)
    abort.add_argument("--reason", default="", help="recorded in the rollout")
    abort.set_defaults(func=_abort)
    listing = verbs.add_parser("list", help="every rollout, newest first")
    listing.add_argument("--limit", type=int, help="at most this many")
    listing.set_defaults(func=_list)
    for parser in (start, status, abort, listing):
        add_admin_flags(parser, waits=parser in (start, status))


def _start(args: argparse.Namespace) -> int:
    from epochserve.proto.v1 import admin_pb2 as pb

    drain = pb.DrainPolicy.Value(f"DRAIN_POLICY_{args.drain.upper()}")
    request = pb.StartRolloutRequest(
        version=args.version,
        source=args.source,
        drain=drain,
        manifest_checksum=args.manifest_checksum,
        stage_timeout_seconds=args.stage_timeout,
        commit_timeout_seconds=args.commit_timeout,
        drain_deadline_seconds=args.drain_deadline,
    )

    async def command(admin: Any) -> int:
        from epochserve.app.cli.render import rollout_line

        timeout = timeout_of(args, waits=False)
        rollout = await admin.start_rollout(request, timeout)
        emit(args, rollout, lambda: f"started {rollout_line(rollout)}")
        if not args.wait:
            return EXIT_OK
        return await _follow(admin, args, rollout.version, live=False)

    return run_admin(args, command)


def _status(args: argparse.Namespace) -> int:
    async def command(admin: Any) -> int:
        from epochserve.app.cli.render import status_block

        if args.watch:
            return await _follow(admin, args, args.version, live=True)
        status = await admin.get_rollout(args.version, timeout_of(args, waits=False))
        emit(args, status, lambda: status_block(status))
        return EXIT_OK

    return run_admin(args, command)


async def _follow(admin: Any, args: argparse.Namespace, version: int, live: bool) -> int:
    """Print each status of the rollout until it ends: 0 DONE, 1 ABORTED, 3 timed out."""
    from epochserve.app.cli.render import progress_line, status_block
    from epochserve.proto.v1 import admin_pb2 as pb

    redraw = live and not args.json and sys.stdout.isatty()
    phase = pb.ROLLOUT_PHASE_UNSPECIFIED
    last_line = ""
    async for status in admin.watch_rollout(version, timeout_of(args, waits=True)):
        phase = status.rollout.phase
        if args.json:
            print_json(status)
        elif live:
            print(
                ("\x1b[H\x1b[2J" if redraw else "") + status_block(status) + ("" if redraw else "\n"),
                flush=True,
            )
        elif (line := progress_line(status)) != last_line:  # a watch may repeat a status; print changes
            print(line, flush=True)
            last_line = line
    if phase == pb.ROLLOUT_PHASE_DONE:
        return EXIT_OK
    if phase == pb.ROLLOUT_PHASE_ABORTED:
        return EXIT_FAILED
    return EXIT_TIMEOUT


def _abort(args: argparse.Namespace) -> int:
    async def command(admin: Any) -> int:
        from epochserve.app.cli.render import rollout_line

        rollout = await admin.abort_rollout(args.version, args.reason, timeout_of(args, waits=False))
        emit(args, rollout, lambda: rollout_line(rollout))
        return EXIT_OK

    return run_admin(args, command)


def _list(args: argparse.Namespace) -> int:
    async def command(admin: Any) -> int:
        from epochserve.app.cli.render import rollouts_table

        reply = await admin.list_rollouts(args.limit, timeout_of(args, waits=False))
        emit(
            args, reply, lambda: f"committed epoch v{reply.committed_epoch}\n{rollouts_table(reply.rollouts)}"
        )
        return EXIT_OK

    return run_admin(args, command)
