"""`epochctl loadtest`: drive load at a router, check every response, write a report (loadtest/).

    epochctl loadtest --target HOST:PORT (--concurrency N | --rate R) (--duration S | --num-requests N)
        [--workload FILE.jsonl | --input-len DIST --output-len DIST --vocab-size V] [--n N]
        [--rollout-every S --source PATH... --admin HOST:PORT --token-file F]   # soak mode
        [--out DIR]
Exit codes: 0 no violation and every request accounted for; 1 violations, or the target does not
answer; 2 bad flags. The report is printed (Markdown) and written to --out (docs/loadtest.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from epochserve.app.cli.cluster_flags import (
    add_admin_connection_flags,
    add_router_flag,
    admin_address,
    router_address,
    token_file,
)
from epochserve.app.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("loadtest", help="drive load at a router; latency, purity under rollouts, soak")
    add_router_flag(p, what="a router (Generation service)")
    loop = p.add_mutually_exclusive_group(required=True)
    loop.add_argument("--concurrency", type=int, help="closed loop: requests kept in flight")
    loop.add_argument("--rate", type=float, help="open loop: mean requests/s, Poisson arrivals")
    p.add_argument("--duration", type=float, metavar="S", help="stop sending after S seconds")
    p.add_argument("--num-requests", type=int, metavar="N", help="stop sending after N requests")
    w = p.add_argument_group("workload")
    w.add_argument("--workload", type=Path, metavar="FILE", help="JSONL of prompts (else synthetic)")
    w.add_argument(
        "--input-len", default="uniform:16,64", metavar="DIST", help="fixed:N, uniform:LO,HI, normal:M,S"
    )
    w.add_argument("--output-len", default="fixed:32", metavar="DIST", help="max_tokens distribution")
    w.add_argument("--vocab-size", type=int, default=512, help="synthetic prompt ids are below this")
    w.add_argument("--n", type=int, default=1, help="samples per request (a group)")
    w.add_argument("--seed", type=int, default=0, help="seeds the workload, sampling and arrivals")
    w.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    w.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (1: off)")
    w.add_argument("--no-ignore-eos", action="store_true", help="let EOS end samples early")
    w.add_argument(
        "--output-mode",
        choices=("stream", "final"),
        default="stream",
        help="stream: a message per engine step (default); final: one per sample at its end",
    )
    r = p.add_argument_group("run")
    r.add_argument("--timeout", type=float, default=300.0, metavar="S", help="deadline of each request")
    r.add_argument(
        "--drain-timeout", type=float, default=None, metavar="S", help="wait for open requests (timeout + 30)"
    )
    r.add_argument("--max-in-flight", type=int, default=10_000, help="open loop: skip arrivals beyond this")
    r.add_argument("--out", type=Path, default=Path("loadtest-report"), help="report directory")
    r.add_argument("--strict-groups", action="store_true", help="a JSONL group split across versions fails")
    r.add_argument("--bucket", type=float, default=1.0, metavar="S", help="throughput-over-time resolution")
    r.add_argument("--no-progress", action="store_true", help="no live progress on stderr")
    r.add_argument("--label", action="append", default=[], metavar="K=V", help="copied into the report")
    _soak_flags(p)
    p.set_defaults(func=run)


def _soak_flags(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("soak mode (rollouts during the load, through the Admin API)")
    s.add_argument("--rollout-every", type=float, metavar="S", help="start a rollout every S seconds")
    s.add_argument("--source", type=Path, nargs="+", default=[], metavar="PATH", help="checkpoints, in turn")
    s.add_argument("--drains", default="finish,abort", help="finish, abort, overlap: in turn")
    s.add_argument("--drain-deadline", type=float, metavar="S", help="each rollout's drain deadline")
    s.add_argument("--publish-dir", type=Path, help="where versions are prepared (default OUT/versions)")
    s.add_argument("--rollout-timeout", type=float, default=300.0, metavar="S", help="per rollout")
    add_admin_connection_flags(s)


def build_config(args: argparse.Namespace) -> Any:
    """The LoadtestConfig of the flags; ConfigError for a bad combination."""
    from epochserve.controlplane.admin.auth import load_token
    from epochserve.errors import ConfigError
    from epochserve.loadtest.config import LoadPlan, LoadtestConfig, SoakConfig
    from epochserve.proto.convert import OutputMode

    plan = LoadPlan(
        concurrency=args.concurrency, rate=args.rate, duration_seconds=args.duration,
        num_requests=args.num_requests, max_in_flight=args.max_in_flight,
        request_timeout_seconds=args.timeout,
        drain_timeout_seconds=args.drain_timeout if args.drain_timeout is not None else args.timeout + 30.0,
        temperature=args.temperature, top_p=args.top_p, ignore_eos=not args.no_ignore_eos, seed=args.seed,
        output_mode=OutputMode(args.output_mode),
    )  # fmt: skip
    soak = None
    if args.rollout_every is not None:
        drains = tuple(d.strip() for d in args.drains.split(",") if d.strip())
        if not set(drains) <= {"finish", "abort", "overlap"}:
            raise ConfigError(f"--drains takes finish, abort and overlap, got {args.drains!r}")
        soak = SoakConfig(
            admin=admin_address(args), token=load_token(token_file(args)), sources=tuple(args.source),
            rollout_every_seconds=args.rollout_every, publish_dir=args.publish_dir or args.out / "versions",
            drains=drains, tls=args.tls, ca_file=args.ca, rollout_timeout_seconds=args.rollout_timeout,
            drain_deadline_seconds=args.drain_deadline,
        )  # fmt: skip
    elif args.source:
        raise ConfigError("--source needs --rollout-every (soak mode)")
    labels = dict(label.partition("=")[::2] for label in args.label)
    return LoadtestConfig(
        target=router_address(args), plan=plan, out_dir=args.out, soak=soak, strict_groups=args.strict_groups,
        bucket_seconds=args.bucket, progress=not args.no_progress, labels=labels,
    )  # fmt: skip


def build_workload(args: argparse.Namespace) -> Any:
    from epochserve.loadtest.workload import JsonlWorkload, LengthDistribution, SyntheticWorkload

    output_len = LengthDistribution.parse(args.output_len)
    if args.workload is not None:
        return JsonlWorkload(args.workload, output_len, args.n, args.seed)
    input_len = LengthDistribution.parse(args.input_len)
    return SyntheticWorkload(input_len, output_len, args.vocab_size, args.n, args.seed)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from epochserve.errors import ConfigError
    from epochserve.loadtest.records import VersionLog
    from epochserve.loadtest.render import render_markdown, verdict
    from epochserve.loadtest.report import check_and_write
    from epochserve.loadtest.runner import LoadtestError, run_load

    try:
        config, workload = build_config(args), build_workload(args)
    except ConfigError as exc:
        print(f"epochctl loadtest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = asyncio.run(run_load(config, workload, VersionLog(), handle_sigint=True))
    except LoadtestError as exc:
        print(f"epochctl loadtest: {exc}", file=sys.stderr)
        return EXIT_FAILED
    report, paths = check_and_write(result)
    print(render_markdown(report), flush=True)
    print(f"report: {paths['markdown']} (JSON {paths['json'].name}, plots, requests.jsonl)", file=sys.stderr)
    return EXIT_OK if verdict(report).startswith("PASS") else EXIT_FAILED
