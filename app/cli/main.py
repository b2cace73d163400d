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

from epochserve import __version__
from epochserve.app.cli.exit_codes import EXIT_FAILED, EXIT_USAGE
from epochserve.errors import ConfigError, EpochserveError
from epochserve.lifetime import die_with_launcher

# Subcommand module names under epochserve.app.cli, in the order `--help` lists them.
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
    parser.add_argument("--version", action="version", version=f"epochctl {__version__}")
    parser.add_argument("--log-level", default="INFO", help="Python logging level (default INFO)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        module = importlib.import_module(f"epochserve.app.cli.{name}")
        module.register(subparsers)
    explain(parser)
    return parser


def explain(parser: argparse.ArgumentParser) -> None:
    """Every command's `--help` opens with what it does (its one-line help where it has no
    description) and every flag's help names its default."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    sub.description = str(helps[name])[0].upper() + str(helps[name])[1:] + "."
                explain(sub)
        elif action.option_strings and action.help and not _names_default(action):
            action.help += f" (default {action.default})"


def _names_default(action: argparse.Action) -> bool:
    default = action.default
    if default in (None, False, [], (), argparse.SUPPRESS) or action.help == argparse.SUPPRESS:
        return True
    shown = {str(default), f"{default:g}"} if isinstance(default, float) else {str(default)}
    return "default" in str(action.help) or any(text in str(action.help) for text in shown)


def main(argv: Sequence[str] | None = None) -> int:
    die_with_launcher()  # when a local launcher (epochctl up, tests) started this process
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except EpochserveError as exc:  # a mistake the user can fix: one line naming it, no traceback
        logging.getLogger(__name__).debug("epochctl %s failed", args.command, exc_info=True)
        print(f"epochctl {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
