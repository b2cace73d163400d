"""`epochctl demo`: the whole story on one machine in a few minutes (see app/demo/run.py)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="local cluster + RL loop + rollouts + verify, with a summary")
    parser.add_argument("--model", default="smollm2", help="Hugging Face model dir, or 'smollm2' (bundled)")
    parser.add_argument(
        "--steps",
        type=int,
        default=3,
        help="RL steps, each publishing a version (3: one rollout per drain policy)",
    )
    parser.add_argument("--no-kill", action="store_true", help="do not kill and restart a worker mid-run")
    parser.add_argument("--workdir", type=Path, default=None, help="logs, checkpoints, audit log")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from epochserve.app.cli.worker_cmd import resolve_model
    from epochserve.app.demo.run import print_summary, run_demo

    model_dir = resolve_model(args.model)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="epochserve-demo-"))
    result = run_demo(model_dir, workdir, steps=args.steps, kill_worker=not args.no_kill,
                      say=lambda text: print(text, file=sys.stderr, flush=True))  # fmt: skip
    print_summary(result)
    return 0 if result.ok else 1
