"""`epochctl generate`: send one prompt to a router (or a worker) and print text, tokens, logprobs, version.

The target is asked through the Generation service first (client/generation.py); a target that does
not serve it (UNIMPLEMENTED: a worker) is asked through the Worker service instead. The text is
decoded with the tokenizer of the model the workers loaded (GetPolicy / GetWorkerInfo name its
directory), or of --tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epochserve.app.cli.cluster_flags import add_router_flag, add_up_flag, router_address
from epochserve.errors import ConfigError

if TYPE_CHECKING:
    from epochserve.proto.results import Sample


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate from a prompt and print text, tokens and logprobs",
        description="Send one prompt to a router (or straight to a worker) and print each sample: its "
        "text, token ids, processed logprobs and the policy version that produced them.",
    )
    add_router_flag(parser, what="a router, or a worker")
    add_up_flag(parser)
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (tokenized by the worker, no chat template)")
    prompt.add_argument("--token-ids", help="prompt as comma-separated token ids, e.g. 504,3458,314")
    parser.add_argument(
        "--max-tokens", type=int, default=32, help="tokens to generate per sample (default 32)"
    )
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default 1.0)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus mass in (0, 1] (default 1.0: off)")
    parser.add_argument(
        "--top-k", type=int, default=None, help="keep the k most likely tokens (default 0: off)"
    )
    parser.add_argument(
        "--min-p", type=float, default=None, help="drop tokens below min_p x the top one's (default 0)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="sampling seed (default: the worker draws one)"
    )
    parser.add_argument("--n", type=int, default=1, help="samples of the prompt (default 1)")
    parser.add_argument(
        "--min-policy-version", type=int, default=None, help="router: wait until this version is committed"
    )
    parser.add_argument("--raw-logprobs", action="store_true", help="also print raw (unprocessed) logprobs")
    parser.add_argument(
        "--top-logprobs", type=int, default=0, help="also print the N most likely tokens (default 0)"
    )
    parser.add_argument(
        "--tokenizer", type=Path, default=None, help="model dir to decode text with (default: the workers')"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="deadline of the call in seconds (default 120)"
    )
    parser.add_argument(
        "--output-mode",
        choices=("stream", "final"),
        default="stream",
        help="stream: a message per engine step (default); final: one message per sample at its end",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per sample")
    parser.set_defaults(func=run)


def parse_token_ids(text: str) -> list[int]:
    """'504, 3458,314' → [504, 3458, 314]; ConfigError naming the first entry that is not one."""
    ids = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise ConfigError(f"--token-ids: {part!r} is not a token id (comma-separated integers >= 0)")
        ids.append(int(part))
    if not ids:
        raise ConfigError("--token-ids: no token ids given")
    return ids


def build_request(args: argparse.Namespace) -> Any:
    from epochserve.proto.convert import OutputMode
    from epochserve.proto.v1 import common_pb2

    sampling = common_pb2.SamplingParams(
        max_tokens=args.max_tokens,
        num_top_logprobs=args.top_logprobs,
        return_raw_logprobs=args.raw_logprobs,
    )
    for field in ("temperature", "top_p", "top_k", "min_p", "seed"):
        if getattr(args, field) is not None:
            setattr(sampling, field, getattr(args, field))
    request = common_pb2.GenerateRequest(
        sampling=sampling, n=args.n, output_mode=OutputMode(args.output_mode).to_proto()
    )
    if args.min_policy_version is not None:
        request.min_policy_version = args.min_policy_version
    if args.token_ids is not None:
        request.prompt_token_ids.extend(parse_token_ids(args.token_ids))
    else:
        request.prompt_text = args.prompt
    return request


def run(args: argparse.Namespace) -> int:
    import grpc

    from epochserve.client.errors import GenerationError
    from epochserve.client.generation import GenerationClient

    request = build_request(args)
    target = router_address(args)
    with GenerationClient(target, timeout=args.timeout, wait_for_ready=False) as client:
        try:
            result = client.send(request)
            model_path = args.tokenizer or _path(client.get_policy().model_path)
        except GenerationError as exc:
            if exc.code != grpc.StatusCode.UNIMPLEMENTED:
                print(f"epochctl generate: {exc.code.name}: {exc.details}", file=sys.stderr)
                return 1
            return _run_on_worker(args, target, request)
    samples = {s.sample_index: _sample_dict(result.request_id, s, via_router=True) for s in result.samples}
    return _print(args, samples, model_path)


def _sample_dict(request_id: str, sample: Sample, via_router: bool) -> dict[str, Any]:
    """One sample as printed; a router's also names its part of the diagnostics."""
    printed = {
        "sample_index": sample.sample_index,
        "token_ids": list(sample.token_ids),
        "logprobs": list(sample.processed_logprobs),
        "raw_logprobs": list(sample.raw_logprobs),
        "top_logprobs": [list(zip(t.token_ids, t.logprobs, strict=True)) for t in sample.top_logprobs],
        "request_id": request_id,
        "policy_version": sample.policy_version,
        "finish_reason": sample.finish_reason,
        "worker_id": sample.worker_id,
        "seed": sample.diagnostics.seed,
    }
    if via_router:
        printed["attempts"] = sample.diagnostics.attempts
        printed["rerun_under_new_version"] = sample.diagnostics.rerun_under_new_version
    return printed


def _run_on_worker(args: argparse.Namespace, target: str, request: Any) -> int:
    import grpc

    from epochserve.proto.results import ResponseAssembler
    from epochserve.proto.v1 import worker_pb2, worker_pb2_grpc

    assembler = ResponseAssembler()
    with grpc.insecure_channel(target) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        try:
            for response in stub.Generate(request, timeout=args.timeout):
                assembler.add(response)
            info = stub.GetWorkerInfo(worker_pb2.GetWorkerInfoRequest(), timeout=10)
            model_path = args.tokenizer or _path(info.model_path)
        except grpc.RpcError as exc:
            print(f"epochctl generate: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    samples = {
        s.sample_index: _sample_dict(assembler.request_id, s, via_router=False) for s in assembler.samples()
    }
    return _print(args, samples, model_path)


def _path(reported: str) -> Path | None:
    return Path(reported) if reported else None


def _print(args: argparse.Namespace, samples: dict[int, dict[str, Any]], model_path: Path | None) -> int:
    decode = _decoder(model_path)
    is_greedy = args.temperature == 0
    for sample in (samples[i] for i in sorted(samples)):
        if decode is not None:
            sample["text"] = decode(sample["token_ids"])
        if is_greedy:
            sample.pop("seed", None)  # a greedy request draws nothing
        print(json.dumps(sample) if args.json else _human(sample))
    return 0


def _decoder(model_path: Path | None) -> Any:
    if model_path is None or not (model_path / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    return lambda ids: tokenizer.decode(ids)


def _human(sample: dict[str, Any]) -> str:
    seed = f"  seed={sample['seed']}" if "seed" in sample else ""
    lines = [
        f"sample {sample['sample_index']}  policy_version={sample['policy_version']}  "
        f"finish={sample.get('finish_reason')}  worker={sample.get('worker_id')}{seed}"
    ]
    if "text" in sample:
        lines.append(f"  text: {sample['text']!r}")
    raw, top = sample["raw_logprobs"], sample["top_logprobs"]
    header = "  token_id  logprob(processed)" + ("  logprob(raw)" if raw else "") + ("  top" if top else "")
    lines.append(header)
    for i, (token, logprob) in enumerate(zip(sample["token_ids"], sample["logprobs"], strict=True)):
        row = f"  {token:8d}  {logprob: 18.6f}"
        if raw:
            row += f"  {raw[i]: 12.6f}"
        if top:
            row += "  " + " ".join(f"{t}:{lp:.4f}" for t, lp in top[i])
        lines.append(row)
    return "\n".join(lines)
