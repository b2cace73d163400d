"""`epochctl verify`: recompute a cluster's returned logprobs with transformers; non-zero above thresholds.

The pre-deployment correctness check: for each response (from a router's --audit-log, or sent now
through a router with --live), every sampled token's processed logprob is recomputed under the
weights of the version the response names, and the mismatch is summarized the way an RL trainer
would feel it (|Δ|, KL, PPO/GSPO clip rates). Responses of a mixture-of-experts model that carry
their routed experts (return_routed_experts; `--live --routed-experts` asks for them) also get the
routing agreement with transformers' router. Exit 0 within thresholds, 1 above, 2 on bad usage.
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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("verify", help="recompute returned logprobs with transformers and compare")
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
        "--model", type=Path, required=True, help="weights of the start version (0) and tokenizer"
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
    from epochserve.app.verify.check import verify
    from epochserve.app.verify.recompute import Recomputer

    try:
        dirs = version_dirs(args)
        records = list(read_audit_log(args.audit_log)) if args.audit_log is not None else live_records(args)
    except (ValueError, OSError) as exc:
        print(f"epochctl verify: {exc}", file=sys.stderr)
        return 2
    total = sum(len(r.samples) for r in records)

    def progress(done: int) -> None:
        print(f"\rverified {done}/{total} samples", end="", file=sys.stderr, flush=True)

    report = verify(records, Recomputer(dirs, args.device), tokenizer(args.model), progress)
    print(file=sys.stderr)
    routing = report.routing
    ok = (
        not report.mixed_version_responses
        and report.overall.within(args.max_abs_delta, args.max_mean_abs_delta, args.max_clip_rate)
        and (routing is None or routing.agreement_rate >= args.min_routing_agreement)
    )
    if args.json:
        print(json.dumps({**report.to_dict(), "ok": ok}, indent=2))
    else:
        print_report(report, ok)
    return 0 if ok else 1


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
        return_routed_experts=args.routed_experts,
    )
    records = []
    with GenerationClient(router_address(args, flag="live")) as client:
        for i in range(args.requests):
            prompt = [rng.randrange(100, 30000) for _ in range(rng.randrange(4, 40))]
            result = client.generate(
                prompt, SamplingParams(**{**_fields(sampling), "seed": i}), n=2, timeout=300
            )
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


def _fields(params: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(params)


def tokenizer(model_dir: Path) -> Any:
    if not (model_dir / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return lambda text: list(tok.encode(text, add_special_tokens=False))


def print_report(report: Any, ok: bool) -> None:
    rows = [("all", report.overall), *((f"v{v}", s) for v, s in sorted(report.by_version.items()))]
    headers = ("samples", "tokens", "mean|Δ|", "max|Δ|", "KL", "clip(tok)", "clip(seq)")
    print(f"{'version':8} " + " ".join(f"{h:>10}" for h in headers))
    for name, s in rows:
        print(f"{name:8} {s.num_sequences:10d} {s.num_tokens:10d} {s.mean_abs_delta:10.2e} "
              f"{s.max_abs_delta:10.2e} {s.kl_new_old:10.2e} {s.token_clip_rate:10.2%} "
              f"{s.sequence_clip_rate:10.2%}")  # fmt: skip
    if report.boundary.num_positions:
        print(f"top-p/min-p boundary within the logits' noise at {report.boundary.num_positions} "
              f"position(s): checked with the engine's support sizes (the rule alone would differ "
              f"there by up to {report.boundary.max_abs_delta_by_rule:.2e})")  # fmt: skip
    if report.num_tokens_without_support_sizes:
        print(f"{report.num_tokens_without_support_sizes} token(s) without support sizes: "
              f"checked by the boundary rule alone")  # fmt: skip
    if report.routing is not None:
        print_routing("routing", report.routing)
        for version, stats in sorted(report.routing_by_version.items()):
            print_routing(f"  v{version}", stats)
    if report.mixed_version_responses:
        print(f"responses mixing versions: {report.mixed_version_responses}")
    print("PASS" if ok else "FAIL")


def print_routing(name: str, stats: Any) -> None:
    print(f"{name}: {stats.agreement_rate:.4%} of {stats.num_pairs} (position, MoE layer) routings agree "
          f"with transformers' router; {stats.num_near_ties} differ at a near-tie (within 1e-5), "
          f"{stats.num_mismatches} without one")  # fmt: skip
