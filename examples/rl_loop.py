"""A small, real RL loop on SmolLM2 through an epochserve cluster (see app/demo/rl_loop.py).

    .venv/bin/epochctl up --workers 2 --ready-file /tmp/up.json     # in one shell
    .venv/bin/python examples/rl_loop.py --up /tmp/up.json --steps 3

Each step prints the versions its groups ran on (one per group) and the trainer's recompute of the
sampled tokens' logprobs against the returned ones: mean and max |Δ|, the KL(new‖old) estimate and
the clip rate a PPO/GSPO ratio clip of 0.2 would show. All ≈ 0: the engine's logprobs are the
trainer's. Then it takes an optimizer step and publishes version v+1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from epochserve.app.demo.rl_loop import LoopConfig, format_step, run_rl_loop
from epochserve.worker.models.bundled import prepare_smollm2


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--up", type=Path, required=True, help="the ready file of `epochctl up`")
    parser.add_argument(
        "--model", type=Path, default=None, help="the cluster's start weights (default SmolLM2)"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--publish", choices=["checkpoint", "broadcast"], default="checkpoint")
    parser.add_argument("--workdir", type=Path, default=None, help="where versions are written")
    args = parser.parse_args()
    up = json.loads(args.up.read_text())
    token = Path(up["admin_token_file"]).read_text().strip()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="epochserve-rl-"))
    reports = run_rl_loop(
        up["routers"][0], up["admin"], token, args.model or prepare_smollm2(), workdir,
        LoopConfig(steps=args.steps, publish=args.publish), lambda r: print(format_step(r), flush=True),
    )  # fmt: skip
    worst = max(r.mismatch.max_abs_delta for r in reports)
    print(f"max |Δ logprob| over {len(reports)} steps: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
