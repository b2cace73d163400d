"""`epochctl`: the one command line of epochserve.

Each subcommand group lives in its own module with `register(subparsers)`, which adds its parser
and sets `func` to a callable taking the parsed args and returning an exit code. Modules are
imported lazily by name so that `epochctl rollout ...` never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from epochserve.lifetime import die_with_launcher

# Subcommand module names under epochserve.controlplane.cli, in the order `--help` lists them.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "worker_cmd",
    "generate_cmd",
    "coordinator_cmd",
    "rollout_cmd",
    "workers_cmd",
    "router_cmd",
    "up_cmd",
    "verify_cmd",
    "demo_cmd",
    "loadtest_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="epochctl", description="Run and operate an epochserve cluster.")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(f"epochserve.controlplane.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    die_with_launcher()  # when a local launcher (epochctl up, tests) started this process
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
