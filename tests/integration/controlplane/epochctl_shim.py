"""Run `epochctl` with the subcommand modules that exist in this checkout.

main.py lists subcommand modules of every role, and some (worker_cmd, generate_cmd) belong to work
that may not have landed yet; importing a missing one would fail the whole command line. The
control-plane tests run the real `main()` through this shim, minus the modules that are absent.
"""

import importlib.util
import sys

from epochserve.controlplane.cli import main as cli

cli.SUBCOMMAND_MODULES = tuple(
    m
    for m in cli.SUBCOMMAND_MODULES
    if importlib.util.find_spec(f"epochserve.controlplane.cli.{m}") is not None
)
sys.exit(cli.main())
