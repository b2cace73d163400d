"""`python -m epochserve.operators`: run the operator (kopf) in this process.

    python -m epochserve.operators [--namespace NS ...] [--liveness URL]

Without --namespace it watches every namespace (the chart's ClusterRole allows that). It runs
standalone (no kopf peering): deploy one replica; Kubernetes restarts it if it dies, and every
handler resumes from the objects' state.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    description = "Run the epochserve Kubernetes operator (kopf)."
    parser = argparse.ArgumentParser(prog="python -m epochserve.operators", description=description)
    parser.add_argument(
        "--namespace", action="append", default=[], help="watch only this namespace (repeatable)"
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL served by kopf (empty to disable)",
    )
    parser.add_argument("--log-level", default="INFO", help="Python logging level")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    import kopf

    from epochserve.operators import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
