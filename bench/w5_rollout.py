"""W5, the RL rollout benchmark (docs/design.md §8): large groups sampled at temperature 1, through
the whole serving path, against the roofline measured in the same run.

Workload (random bf16 weights of a Llama shape): PROMPTS prompts of 256 random ids, n samples each,
max_tokens new tokens, ignore_eos, temperature 1.0, top_p 1.0 and then 0.95, processed logprobs
returned (always). `--long` is the long-trace variant (32 prompts x n 8, 4,096 new tokens).
Each setting runs on three paths, one after the other on the same GPU:
  engine   the engine in this process, every request added at once (FINAL), stepped to the end
  grpc     one worker process behind one router (`epochctl up`'s processes), the router reaching
           the worker over the Worker.Session gRPC call; the asyncio client holds every request
           in flight
  link     the same with the router's default transport, the worker's session link
A served path may name its output mode: grpc/final, link/stream, ...; FINAL (one message per
sample at its end, what a trainer that does not stream asks for) when it names none.
The roofline of a setting is the least time its own counts allow: every prompt's prefill FLOPs at
the measured bf16 matmul peak, plus, for each decode step the batch limit (max_num_seqs) forces,
the weights and every running sequence's KV read at the measured HBM bandwidth.
    python bench/w5_rollout.py --shape 1b [--paths engine,grpc,link,link/stream] [--top-p 1.0,0.95] [--long]
    python bench/w5_rollout.py --tiny      # CPU: a tiny model, small counts (checks the script)
Prints a table last: out tok/s, % of roofline, path / engine. Not pass/fail: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))

from gpu_common import (  # noqa: E402
    LLAMA31_8B,
    LLAMA32_1B,
    LLAMA_TINY,
    kv_bytes_per_token,
    measure_ceilings,
    weight_bytes,
    write_config,
)

SHAPES = {"1b": LLAMA32_1B, "8b": LLAMA31_8B, "tiny": LLAMA_TINY}
PROMPT_LEN = 256


@dataclass(frozen=True)
class Workload:
    prompts: int
    n: int
    max_tokens: int
    top_p: float
    prompt_len: int = PROMPT_LEN

    @property
    def sequences(self) -> int:
        return self.prompts * self.n

    @property
    def output_tokens(self) -> int:
        return self.sequences * self.max_tokens


def roofline_seconds(config: dict, w: Workload, max_num_seqs: int, ceilings: dict[str, float]) -> float:
    """The least time this workload's counts allow (module docstring): prefill at the matmul peak,
    decode steps (waves of at most max_num_seqs sequences) at the HBM bandwidth."""
    weights = weight_bytes(config)
    params = weights / 2
    prefill = 2 * params * w.prompts * w.prompt_len / ceilings["bf16_flop_per_s"]  # n samples share it
    kv = kv_bytes_per_token(config)
    decode_bytes = 0.0
    for wave in range(math.ceil(w.sequences / max_num_seqs)):
        running = min(max_num_seqs, w.sequences - wave * max_num_seqs)
        for t in range(w.max_tokens):
            decode_bytes += weights + running * (w.prompt_len + t) * kv
    return prefill + decode_bytes / ceilings["hbm_bytes_per_s"]


def random_prompts(w: Workload, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    low = min(1000, vocab // 4)
    return torch.randint(low, vocab, (w.prompts, w.prompt_len), generator=g).tolist()


def engine_overrides(args: argparse.Namespace, device: str, max_model_len: int) -> dict:
    return dict(
        device=device, load_format="random", max_model_len=max_model_len, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )  # fmt: skip


def run_engine(model_dir: Path, overrides: dict, workloads: list[Workload], vocab: int) -> list[float]:
    """Path `engine`: every request added at once, stepped until idle, in this process. Returns
    each workload's output tokens per second."""
    from fixtures.engine import make_engine, make_request, run_to_completion

    from epochserve.proto.convert import OutputMode

    engine = make_engine(model_dir, **overrides)

    def go(w: Workload, prompts: list[list[int]], max_tokens: int) -> float:
        tag = time.monotonic_ns()
        requests = [
            make_request(f"{tag}-{i}", p, engine.limits, n=w.n, temperature=1.0, top_p=w.top_p, seed=i,
                         max_tokens=max_tokens, ignore_eos=True, output_mode=OutputMode.FINAL)
            for i, p in enumerate(prompts)
        ]  # fmt: skip
        start = time.perf_counter()
        out = run_to_completion(engine, requests, max_steps=10_000_000)
        elapsed = time.perf_counter() - start
        tokens = sum(len(s.token_ids) for samples in out.values() for s in samples.values())
        assert tokens == len(prompts) * w.n * max_tokens, tokens
        return tokens / elapsed

    rates = []
    for k, w in enumerate(workloads):
        go(w, random_prompts(w, vocab, seed=100 + k)[: max(1, w.prompts // 8)], 16)  # warm up
        rates.append(go(w, random_prompts(w, vocab, seed=1 + k), w.max_tokens))
    engine.close()
    return rates


async def _drive_router(
    address: str, w: Workload, prompts: list[list[int]], max_tokens: int, mode: str
) -> tuple[float, int]:
    from epochserve.client.generation import AsyncGenerationClient
    from epochserve.proto.convert import OutputMode
    from epochserve.sampling import SamplingParams

    async with AsyncGenerationClient(address) as client:
        await client.get_policy(timeout=60, wait_for_ready=True)
        start = time.perf_counter()
        results = await asyncio.gather(*[
            client.generate(p, SamplingParams(temperature=1.0, top_p=w.top_p, seed=i, max_tokens=max_tokens,
                                              ignore_eos=True), n=w.n, timeout=3600,
                            output_mode=OutputMode(mode))
            for i, p in enumerate(prompts)
        ])  # fmt: skip
        elapsed = time.perf_counter() - start
    tokens = sum(len(s.token_ids) for r in results for s in r.samples)
    return elapsed, tokens


def run_cluster(model_dir: Path, workdir: Path, overrides: dict, workloads: list[Workload], vocab: int,
                paths: list[str]) -> dict[str, list[float]]:  # fmt: skip
    """Paths `grpc` / `link`: etcd, a coordinator, one worker and a router per path, as `epochctl up`
    runs them. Returns each path's output tokens per second, per workload."""
    from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec

    worker_args = [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items() if k != "device"]
    spec = LocalClusterSpec(
        model_dir=model_dir, workdir=workdir, device=overrides["device"], worker_args=tuple(worker_args)
    )  # fmt: skip
    rates: dict[str, list[float]] = {}
    addresses: dict[str, str] = {}  # a router per transport
    with LocalCluster(spec) as cluster:
        for path in paths:
            transport, _, mode = path.partition("/")
            mode = mode or "final"
            if transport not in addresses:
                extra = () if transport == "link" else ("--no-session-link",)
                addresses[transport] = cluster.add_router(*extra).address
            address = addresses[transport]
            for k, w in enumerate(workloads):
                warm = random_prompts(w, vocab, seed=100 + k)[: max(1, w.prompts // 8)]
                asyncio.run(_drive_router(address, w, warm, 16, mode))
                prompts = random_prompts(w, vocab, seed=1 + k)
                elapsed, tokens = asyncio.run(_drive_router(address, w, prompts, w.max_tokens, mode))
                assert tokens == w.output_tokens, tokens
                rates.setdefault(path, []).append(tokens / elapsed)
                print(f"top_p {w.top_p} {path}: {rates[path][-1]:.0f} tok/s", flush=True)
    return rates


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--tiny", action="store_true", help="CPU, the tiny shape, 4 prompts x n 2 x 8 tokens")
    parser.add_argument("--long", action="store_true", help="long traces: 32 prompts x n 8 x 4,096 tokens")
    parser.add_argument(
        "--paths", default="engine,grpc,link", help="comma-separated: engine, grpc[/MODE], link[/MODE]"
    )
    parser.add_argument("--top-p", default="1.0,0.95", help="comma-separated top_p settings")
    parser.add_argument("--prompts", type=int, default=None, help="default 128 (32 with --long)")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=None, help="default 512 (4,096 with --long)")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=8192)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.shape, device = "tiny", "cpu"
        args.prompts, args.n, args.max_tokens = args.prompts or 4, 2, args.max_tokens or 8
        args.max_num_seqs = min(args.max_num_seqs, 8)
    else:
        device = "cuda"
    prompts = args.prompts or (32 if args.long else 128)
    max_tokens = args.max_tokens or (4096 if args.long else 512)
    config = SHAPES[args.shape]
    paths = args.paths.split(",")
    results: dict = {
        "shape": args.shape,
        "date": time.strftime("%Y-%m-%d"),
        "max_num_seqs": args.max_num_seqs,
    }
    if device == "cuda":
        results["device"] = torch.cuda.get_device_name()
        results.update(measure_ceilings())
        torch.cuda.empty_cache()
    prompt_len = 16 if args.tiny else PROMPT_LEN
    workloads = [Workload(prompts, args.n, max_tokens, float(x), prompt_len) for x in args.top_p.split(",")]
    overrides = engine_overrides(args, device, prompt_len + max_tokens + 16)
    rows: list[dict] = [{"top_p": w.top_p, "output_tokens": w.output_tokens} for w in workloads]
    if device == "cuda":
        for row, w in zip(rows, workloads, strict=True):
            row["roofline_tok_s"] = w.output_tokens / roofline_seconds(config, w, args.max_num_seqs, results)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config(Path(tmp) / "model", config)
        if "engine" in paths:
            for row, rate in zip(
                rows, run_engine(model_dir, overrides, workloads, config["vocab_size"]), strict=True
            ):
                row["engine_tok_s"] = rate
                print(f"top_p {row['top_p']} engine: {rate:.0f} tok/s", flush=True)
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
        served = [path for path in paths if path != "engine"]
        if served:
            rates = run_cluster(
                model_dir, Path(tmp) / "cluster", overrides, workloads, config["vocab_size"], served
            )
            for path, values in rates.items():
                for row, rate in zip(rows, values, strict=True):
                    row[f"{path}_tok_s"] = rate
    results["rows"] = rows
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    table(results, paths)


def table(r: dict, paths: list[str]) -> None:
    if "hbm_bytes_per_s" in r:
        hbm, peak = r["hbm_bytes_per_s"] / 1e12, r["bf16_flop_per_s"] / 1e12
        print(f"\nW5 {r['shape']}: HBM {hbm:.2f} TB/s, bf16 {peak:.0f} TFLOP/s ({r['device']}, {r['date']})")
    print(f"max_num_seqs {r['max_num_seqs']}")
    print(f"{'top_p':>6} {'path':>12} {'out tok/s':>10} {'roofline':>10} {'vs roof':>8} {'/engine':>8}")
    for row in r["rows"]:
        roof = row.get("roofline_tok_s", float("nan"))
        base = row.get("engine_tok_s", float("nan"))
        for path in paths:
            value = row[f"{path}_tok_s"]
            ratios = f"{value / roof:8.1%} {value / base:8.2f}"
            print(f"{row['top_p']:6.2f} {path:>12} {value:10.0f} {roof:10.0f} {ratios}")


if __name__ == "__main__":
    main()
