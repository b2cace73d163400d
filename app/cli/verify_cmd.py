"""`epochctl verify`: recompute a cluster's returned logprobs and compare; non-zero above thresholds.

The pre-deployment correctness check: for each response (from a router's --audit-log, or sent now
through a router with --live), every sampled token's processed logprob is recomputed under the
weights of the version the response names, and the mismatch is summarized the way an RL trainer
would feel it (|Δ|, KL, PPO/GSPO clip rates). Two recomputers:
- transformers (default): the trainer's reference, from the checkpoints. Responses of a
  mixture-of-experts model that carry their routed experts (return_routed_experts; `--live
  --routed-experts` asks for them) also get the routing agreement with transformers' router, and
  `--replay-routing` recomputes them a second time with the engine's experts forced (the thresholds
  then apply to that replayed recompute, the free-routing one is reported beside it).
- `--engine`: the serving engine itself, through a router: each sample is re-scored as a prompt
  (return_prompt_logprobs) pinned to its version (app/verify/engine_audit.py).
Exit 0 within thresholds, 1 above, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from epochserve.app.cli.admin_flags import add_admin_flags
from epochserve.app.cli.cluster_flags import admin_address, router_address, token_file
from epochserve.app.cli.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="recompute returned logprobs (transformers or the engine) and compare"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audit-log", type=Path, help="a router's --audit-log file (JSON lines)")
    source.add_argument(
        "--live",
        nargs="?",
        const="",
        metavar="ROUTER",
        help="send --requests requests through a router now (without ROUTER: --up's, $EPOCHSERVE_ROUTER's)",
    )
    parser.add_argument("--requests", type=int, default=8, help="--live: requests to send (n=2 each)")
    parser.add_argument(
        "--routed-experts", action="store_true", help="--live: ask for routed experts (MoE models only)"
    )
    parser.add_argument(
        "--replay-routing",
        action="store_true",
        help="MoE: also recompute with the engine's routed experts forced in transformers (every sample "
        "must carry them; implies --routed-experts); the thresholds then apply to the replayed recompute",
    )
    parser.add_argument(
        "--engine",
        nargs="?",
        const="",
        metavar="ROUTER",
        help="re-score on the serving engine through a router (prompt_logprobs under each sample's version) "
        "instead of transformers (without ROUTER: --live's, --up's, $EPOCHSERVE_ROUTER's)",
    )
    parser.add_argument(
        "--model", type=Path, help="weights of the start version (0) and tokenizer; required without --engine"
    )
    parser.add_argument(
        "--version-dir", action="append", default=[], metavar="V=DIR", help="weights of version V"
    )
    parser.add_argument(
        "--no-admin", action="store_true", help="do not ask the coordinator for rollout sources"
    )
    parser.add_argument("--device", default="cpu", help="where transformers recomputes (cpu or cuda)")
    parser.add_argument("--max-abs-delta", type=float, default=1e-2, help="largest |Δ logprob| allowed")
    parser.add_argument("--max-mean-abs-delta", type=float, default=1e-3, help="largest mean |Δ| allowed")
    parser.add_argument("--max-clip-rate", type=float, default=0.0, help="largest PPO/GSPO clip rate allowed")
    parser.add_argument(
        "--min-routing-agreement",
        type=float,
        default=0.0,
        help="smallest share of (position, MoE layer) routings that must agree with transformers' router",
    )
    add_admin_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from epochserve.app.verify.audit import read_audit_log
    from epochserve.app.verify.replay import ReplayError

    try:
        check_usage(args)
        records = list(read_audit_log(args.audit_log)) if args.audit_log is not None else live_records(args)
    except (ValueError, OSError) as exc:
        return usage_error(str(exc))
    total = sum(len(r.samples) for r in records)

    def progress(done: int) -> None:
        print(f"\rverified {done}/{total} samples", end="", file=sys.stderr, flush=True)

    check = engine_check if args.engine is not None else transformers_check
    try:
        report, ok, text = check(args, records, progress)
    except ReplayError as exc:  # --replay-routing on responses without (fitting) routed experts
        return usage_error(f"--replay-routing: {exc}")
    except KeyError as exc:  # a version whose weights nobody named
        return usage_error(str(exc.args[0]))
    print(file=sys.stderr)
    print(json.dumps({**report.to_dict(), "ok": ok}, indent=2) if args.json else text)
    return EXIT_OK if ok else EXIT_FAILED


def usage_error(message: str) -> int:
    print(f"\nepochctl verify: {message}", file=sys.stderr)
    return EXIT_USAGE


def check_usage(args: argparse.Namespace) -> None:
    if args.engine is None and args.model is None:
        raise ValueError("--model is required (the weights transformers recomputes with), unless --engine")
    if args.engine is not None and args.replay_routing:
        raise ValueError("--replay-routing recomputes with transformers; it does not go with --engine")


def transformers_check(args: argparse.Namespace, records: list[Any], progress: Any) -> tuple[Any, bool, str]:
    from epochserve.app.verify.check import verify
    from epochserve.app.verify.recompute import Recomputer
    from epochserve.app.verify.report_text import format_transformers_report

    recomputer = Recomputer(version_dirs(args), args.device)
    report = verify(records, recomputer, tokenizer(args.model), progress, replay=args.replay_routing)
    gated = report.replayed if report.replayed is not None else report.overall
    routing = report.routing
    ok = (
        not report.mixed_version_responses
        and gated.within(args.max_abs_delta, args.max_mean_abs_delta, args.max_clip_rate)
        and (routing is None or routing.agreement_rate >= args.min_routing_agreement)
    )
    return report, ok, format_transformers_report(report, ok)


def engine_check(args: argparse.Namespace, records: list[Any], progress: Any) -> tuple[Any, bool, str]:
    from epochserve.app.verify.engine_audit import audit_on_engine
    from epochserve.app.verify.report_text import format_engine_report
    from epochserve.client.generation import AsyncGenerationClient

    target = router_address(args, flag="engine" if args.engine or not args.live else "live")
    tokenize = tokenizer(args.model) if args.model is not None else None

    async def rescore() -> Any:
        async with AsyncGenerationClient(target) as client:
            return await audit_on_engine(records, client, tokenize, progress)

    report = asyncio.run(rescore())
    nothing_compared = report.overall.num_sequences == 0 and bool(report.retired)
    ok = (
        not report.mixed_version_responses
        and not report.errors
        and not nothing_compared
        and report.overall.within(args.max_abs_delta, args.max_mean_abs_delta, args.max_clip_rate)
    )
    return report, ok, format_engine_report(report, ok)


def version_dirs(args: argparse.Namespace) -> dict[int, Path]:
    from epochserve.app.verify.versions import parse_version_dirs, rollout_dirs

    dirs: dict[int, Path] = {0: args.model}
    if not args.no_admin:
        from epochserve.controlplane.admin.auth import load_token
        from epochserve.controlplane.admin.client import AdminClient

        async def fetch() -> dict[int, Path]:
            async with AdminClient(
                admin_address(args), load_token(token_file(args)), tls=args.tls, ca_file=args.ca
            ) as admin:
                return await rollout_dirs(admin)

        dirs.update(asyncio.run(fetch()))
    dirs.update(parse_version_dirs(args.version_dir))
    return dirs


def live_records(args: argparse.Namespace) -> list[Any]:
    """--live: random prompts, sampled at temperature 1 (n=2) through the router, as records."""
    import random
    from dataclasses import replace

    from epochserve.app.verify.audit import ResponseRecord, VerifiedSample
    from epochserve.client.generation import GenerationClient
    from epochserve.sampling import SamplingParams

    rng = random.Random(0)
    sampling = SamplingParams(
        temperature=1.0,
        top_p=0.95,
        max_tokens=16,
        ignore_eos=True,
        return_support_size=True,
        return_routed_experts=args.routed_experts or args.replay_routing,
    )
    records = []
    with GenerationClient(router_address(args, flag="live")) as client:
        for i in range(args.requests):
            prompt = [rng.randrange(100, 30000) for _ in range(rng.randrange(4, 40))]
            result = client.generate(prompt, replace(sampling, seed=i), n=2, timeout=300)
            samples = tuple(
                VerifiedSample(
                    s.policy_version,
                    s.token_ids,
                    s.processed_logprobs,
                    s.support_sizes,
                    s.routed_experts,
                    s.prompt_routed_experts,
                    s.routed_top_k,
                )
                for s in result.samples
            )
            records.append(ResponseRecord(result.request_id, tuple(prompt), "", sampling, samples))
    return records


def tokenizer(model_dir: Path) -> Any:
    if not (model_dir / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return lambda text: list(tok.encode(text, add_special_tokens=False))
