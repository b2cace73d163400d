"""What a decode step costs during a drain=overlap, in one engine, against the same batch on one
version (#23; docs/design.md §5).

The closed-loop bench (overlap_drain.py) compares runs a minute or more apart, and their order
alone has moved throughput by 13.6% on an H100 (docs/benchmarks.md), more than the overlap's own
cost. This one times decode steps of one engine in one process, with the same number of sequences
and nearly the same context lengths, so that the difference is the overlap's:

    one version   BATCH sequences of v0 on the live weights (a step of a run without rollouts)
    overlap K     BATCH - K sequences of v0 on the live weights and K of v1 on the verified staged
                  twins: two forward passes a step, each replaying its own decode graph on CUDA

Each overlap row is set against the bound no implementation beats: the one-version step plus one
more read of the weights (W bytes at the copy bandwidth measured in this run), since both weight
sets are read every step while both versions run. "of bound" near 100% means the overlap costs
only that read; below it, the second pass's own costs (its padding to a graph bucket, the second
sampling, host work) show.

    python bench/overlap_step.py                          # CUDA, Llama-3.2-1B shape, 256 x 3,072
    python bench/overlap_step.py --graph-bucket-step 16   # finer graph buckets (epochctl worker flag)
    python bench/overlap_step.py --profile 10             # and each row's kernel time and top kernels
    python bench/overlap_step.py --device cpu --shape tiny --batch 8 --context 32 --splits 4 --steps 4
                                                          # CPU: checks the script
Timings are not pass/fail; numbers go to docs/benchmarks.md with the machine, date and commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_common import measure_ceilings, weight_bytes
from profile_steps import add_requests, prefill, sync
from soak import LLAMA_1B, TINY, random_llama

SHAPES = {"1b": LLAMA_1B, "tiny": TINY}
TOP_KERNELS = 8  # --profile: kernels listed a row
MAX_TOKENS = 4000  # a request's budget: more than every row's steps together
STAGE_TIMEOUT_SECONDS = 300.0  # verifying 2.5 GB of staged weights takes seconds; a hung thread must not


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b", help="random Llama weights")
    p.add_argument("--batch", type=int, default=256, help="sequences in every timed step")
    p.add_argument("--context", type=int, default=3072, help="prompt tokens of each sequence")
    p.add_argument(
        "--splits", default="16,128", help="K,...: sequences on the new version in each overlap row"
    )
    p.add_argument("--steps", type=int, default=40, help="decode steps timed per row (after 5 untimed)")
    p.add_argument("--graph-bucket-step", type=int, default=None, help="the engine's (default: its own)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="also profile N steps a row (torch.profiler): kernel ms a step and the top kernels",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def splits_of(text: str, batch: int) -> list[int]:
    splits = sorted({int(k) for k in text.split(",") if k})
    if not splits or splits[0] < 1 or splits[-1] >= batch:
        raise SystemExit(f"--splits: each K must be in 1..{batch - 1}, got {text!r}")
    return splits


class Bench:
    """One engine on v0's checkpoint with v1 staged beside it, and the requests it runs."""

    WARMUP_STEPS = 5

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        from fixtures.engine import make_engine

        from epochserve.worker.weights.manifest import manifest_of_checkpoint

        self.args = args
        cuda = args.device.startswith("cuda")
        shape = dict(SHAPES[args.shape], max_position_embeddings=args.context + 4096)
        dtype = torch.bfloat16 if cuda else torch.float32
        old = random_llama(root / "v0", shape, seed=0, dtype=dtype, device=args.device)
        new = random_llama(root / "v1", shape, seed=1, dtype=dtype, device=args.device)
        manifest_of_checkpoint(1, new).write(new)
        if cuda:
            torch.cuda.empty_cache()
        extra = {} if args.graph_bucket_step is None else {"graph_bucket_step": args.graph_bucket_step}
        self.engine = make_engine(
            old, device=args.device, max_num_seqs=args.batch, max_num_batched_tokens=8192,
            max_model_len=args.context + 4096, enable_prefix_cache=False, **extra,
        )  # fmt: skip
        self.new_checkpoint = new
        self.shape = shape
        self.num_adds = 0  # calls of add: each labels its requests apart

    def add(self, count: int) -> None:
        """`count` requests of the engine's current version, each one sequence of --context random
        prompt ids, long enough to outlast every timed row; stepped until each has its first token."""
        args = self.args
        label = f"add{self.num_adds}"
        add_requests(self.engine, label, count, args.context, MAX_TOKENS, args.temperature, args.top_p)
        self.num_adds += 1
        prefill(self.engine)

    def stage_new_version(self) -> None:
        """Stage v1 and capture its twins' decode graphs, as the rollout agent does before a commit."""
        weights = self.engine.weights
        weights.stage(1, str(self.new_checkpoint), None)
        result = weights.wait(STAGE_TIMEOUT_SECONDS)
        if result is None:
            raise SystemExit(f"v1 did not stage within {STAGE_TIMEOUT_SECONDS:.0f} s")
        if result.staged is None or not result.staged.runnable:
            raise SystemExit(f"v1 is not runnable beside v0: {result.error or 'staged in host memory'}")
        weights.take_result()
        self.engine.prepare_twins()

    def begin_overlap(self) -> None:
        from epochserve.controlplane.store.records import DrainPolicy

        self.engine.begin_drain(1, DrainPolicy.OVERLAP)
        drain = self.engine.draining
        if drain is None or drain.policy is not DrainPolicy.OVERLAP:
            raise SystemExit(f"the overlap did not start: {drain.reason if drain else 'no drain'}")

    def rebalance(self, on_new: int) -> None:
        """End old-version requests until BATCH - on_new remain, then add new-version ones."""
        engine = self.engine
        engine._flush()  # the step in flight resolves before requests end
        old = [rid for rid, seqs in engine._requests.items() if seqs and seqs[0].policy_version == 0]
        for request_id in old[: max(0, len(old) - (self.args.batch - on_new))]:
            engine.abort_request(request_id, "overlap_step bench: making room for v1")
        self.add(on_new - self.count(1))

    def count(self, version: int) -> int:
        return sum(1 for seqs in self.engine._requests.values() if seqs and seqs[0].policy_version == version)

    def time_steps(self) -> dict[str, float]:
        """Wall ms per decode step, averaged over --steps (with run-ahead where the engine has it)
        after WARMUP_STEPS untimed ones; and the share of those steps that ran ahead."""
        engine, device = self.engine, torch.device(self.args.device)
        for _ in range(self.WARMUP_STEPS):
            engine.step()
        sync(device)
        ahead_before, start = engine.num_run_ahead_steps, time.perf_counter()
        for _ in range(self.args.steps):
            engine.step()
        sync(device)
        seconds = time.perf_counter() - start
        ahead = (engine.num_run_ahead_steps - ahead_before) / self.args.steps
        row = {"ms_per_step": 1000 * seconds / self.args.steps, "run_ahead_share": ahead}
        return row | (self.profile_steps() if self.args.profile else {})

    def profile_steps(self) -> dict:
        """Kernel ms a step (the device's busy time; the rest of a step it waits on the host) and
        the kernels that took most of it, over --profile steps under torch.profiler."""
        steps, device = self.args.profile, torch.device(self.args.device)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(steps):
                self.engine.step()
            sync(device)
        events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
        events.sort(key=lambda e: e.self_device_time_total, reverse=True)
        top = [
            (e.key[:70], e.self_device_time_total / 1000 / steps, e.count / steps)
            for e in events[:TOP_KERNELS]
        ]
        kernel_ms = sum(e.self_device_time_total for e in events) / 1000 / steps
        return {"kernel_ms_per_step": kernel_ms, "top_kernels": top}


def run(args: argparse.Namespace) -> dict:
    splits = splits_of(args.splits, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        ceilings = None
        if args.device.startswith("cuda"):
            ceilings = measure_ceilings()
            torch.cuda.empty_cache()  # its 4 GiB back before the engine sizes its KV pool
        bench = Bench(args, Path(tmp))
        bench.add(args.batch)
        rows = [{"row": "one version", "on_new": 0, **bench.time_steps()}]
        print(f"one version: {rows[0]['ms_per_step']:.2f} ms a step", flush=True)
        bench.stage_new_version()
        bench.begin_overlap()
        for on_new in splits:
            bench.rebalance(on_new)
            assert bench.count(0) + bench.count(1) == args.batch
            rows.append({"row": f"overlap {on_new}", "on_new": on_new, **bench.time_steps()})
            print(f"overlap {on_new}: {rows[-1]['ms_per_step']:.2f} ms a step", flush=True)
        weights = weight_bytes({"tie_word_embeddings": False, **bench.shape})  # TINY: untied (LlamaConfig)
        engine = bench.engine
        setup = {k: v for k, v in vars(args).items() if k != "json"} | {"json": str(args.json)}
        setup |= {"graph_bucket_step": engine.config.graph_bucket_step, "kernels": engine.kernel_mode}
    base = rows[0]["ms_per_step"]
    # hbm_bytes_per_s counts a copy's bytes read and written: the rate at which W alone is read
    extra_ms = None if ceilings is None else 1000 * weights / ceilings["hbm_bytes_per_s"]
    for row in rows:
        row["vs_one_version"] = base / row["ms_per_step"]
        if extra_ms is not None and row["on_new"]:
            row["bound"] = base / (base + extra_ms)
            row["of_bound"] = row["vs_one_version"] / row["bound"]
    sizes = {"weight_bytes": weights, "extra_read_ms": extra_ms}
    return {"setup": setup, "ceilings": ceilings, **sizes, "rows": rows}


def table(result: dict) -> str:
    lines = [
        "| row | ms a step | vs one version | bound | of bound | steps run ahead |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        bound = f"{row['bound']:.1%}" if "bound" in row else ""
        of_bound = f"{row['of_bound']:.1%}" if "of_bound" in row else ""
        lines.append(
            f"| {row['row']} | {row['ms_per_step']:.2f} | {row['vs_one_version']:.1%} | {bound} | "
            f"{of_bound} | {row['run_ahead_share']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    result = run(args)
    extra = result["extra_read_ms"]
    if extra is not None:
        bandwidth = result["ceilings"]["hbm_bytes_per_s"]
        print(f"weights {result['weight_bytes'] / 1e9:.2f} GB, copy bandwidth {bandwidth / 1e12:.2f} TB/s: "
              f"{extra:.2f} ms more a step while both versions run")  # fmt: skip
    print(table(result))
    for row in result["rows"]:
        if "top_kernels" in row:
            print(
                f"{row['row']}: kernels {row['kernel_ms_per_step']:.2f} ms a step; ms a step, calls a step:"
            )
            for name, ms, calls in row["top_kernels"]:
                print(f"  {ms:7.3f} {calls:6.1f}  {name}")
    print(f"median of the overlap rows vs one version: "
          f"{statistics.median(r['vs_one_version'] for r in result['rows'][1:]):.1%}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
