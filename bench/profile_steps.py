"""Where a decode step's time goes (8B shape by default; 1b, tiny): host phases and the fp32 lm_head.

The phases of one synchronous engine step (Engine.step without run-ahead), timed with a device
sync at the boundary between host and device work:
  schedule   Scheduler.schedule
  plan       ModelRunner.plan: the batch as a StepPlan (token ids, positions, slots, block tables)
  launch     the rest of Engine._launch: the plan's tensors to the device, the model (eagerly or a
             decode graph) and the sampling queued
  wait       the device finishing the step
  resolve    Engine._resolve: the samples on the host, tokens appended, blocks registered, finishes
Beside them, "step" is the median of the engine's own step() over as many calls: with run-ahead
(async scheduling, on by default on CUDA) the host's phases overlap the device's work.

    python bench/profile_steps.py                 # 8B shape, CUDA: batch 1 and batch 256, then lm_head
    python bench/profile_steps.py --profile       # torch.profiler over a few batch-256 decode steps
    python bench/profile_steps.py --lm-head       # the lm_head comparison alone (CUDA)
    python bench/profile_steps.py --device cpu --shape tiny --workloads 1x16,4x32 --steps 3
                                                  # CPU: a tiny random Llama (checks the script)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_common import LLAMA31_8B, LLAMA32_1B, LLAMA_TINY, cuda_time, write_config

SHAPES = {"8b": LLAMA31_8B, "1b": LLAMA32_1B, "tiny": LLAMA_TINY}
PROFILE_STEPS = 5  # decode steps under torch.profiler (--profile)


def parse_workloads(text: str) -> list[tuple[int, int]]:
    """COUNTxPROMPT_LEN,...: "1x128,256x512" -> [(1, 128), (256, 512)], (requests, prompt length)."""
    try:
        pairs = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected COUNTxPROMPT_LEN[,...], got {text!r}")
    return [(p[0], p[1]) for p in pairs]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--profile", action="store_true", help="torch.profiler over the last workload")
    mode.add_argument("--lm-head", action="store_true", help="only the lm_head comparison (CUDA)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b", help="random Llama weights")
    parser.add_argument(
        "--workloads",
        type=parse_workloads,
        default="1x128,256x512",
        help="COUNTxPROMPT_LEN,...: requests added at once, their prompt length (default %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=30, help="decode steps timed per phase (and per step)")
    parser.add_argument("--max-tokens", type=int, default=100, help="new tokens per request")
    parser.add_argument(
        "--async-scheduling",
        choices=("auto", "on", "off"),
        default="auto",
        help="the engine's run-ahead (auto: on for CUDA); phases are timed without it either way",
    )
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); W5 samples at 1")
    parser.add_argument("--top-p", type=float, default=1.0, help="below 1 the sampler filters (W5: 0.95)")
    parser.add_argument("--skip-lm-head", action="store_true", help="no lm_head comparison after the phases")
    return parser


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_bench_engine(args: argparse.Namespace, model_dir: Path, max_num_seqs: int):
    from fixtures.engine import make_engine

    return make_engine(model_dir, device=args.device, load_format="random", max_model_len=2048,
                       max_num_seqs=max_num_seqs, max_num_batched_tokens=8192,
                       async_scheduling=args.async_scheduling)  # fmt: skip


def add_requests(
    engine,
    label: str,
    count: int,
    prompt_len: int,
    max_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> None:
    from fixtures.engine import make_request

    vocab = engine.model_config.vocab_size
    low, high = min(1000, vocab // 2), min(100000, vocab)  # the 8B shape: ids clear of special tokens
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        prompt = torch.randint(low, high, (prompt_len,), generator=g).tolist()
        sampling = dict(temperature=temperature, top_p=top_p, seed=i, max_tokens=max_tokens, ignore_eos=True)
        engine.add_request(make_request(f"{label}-{i}", prompt, engine.limits, **sampling))


def prefill(engine) -> None:
    """Step until every sequence has its first token; then resolve the step left in flight (run-ahead),
    so that the sequences are between steps: each has exactly its last token uncomputed."""
    while any(s.num_generated_tokens == 0 for s in engine.scheduler.running + list(engine.scheduler.waiting)):
        engine.step()
    engine._flush()


def phases(engine, steps: int) -> dict[str, float]:
    """Median ms per phase over up to `steps` synchronous engine steps (fewer if the work runs out),
    then the median ms of as many of the engine's own step() calls (run-ahead where it is on).

    The steps go through the engine's own _launch and _resolve, so the sequences stay exactly as
    Engine.step would leave them; ModelRunner.plan is wrapped to time it inside _launch. Never call
    runner.plan on a batch scheduled while a run-ahead step is in flight: its sequences then have
    nothing uncomputed and the plan's logits indices point before the batch (-1 for the first)."""
    assert not engine._launched, "resolve the step in flight first (prefill does)"
    device = engine.config.torch_device
    runner = engine.runner
    times: dict[str, list[float]] = defaultdict(list)
    plan_ms: list[float] = []
    plan = runner.plan

    def timed_plan(batch, on_twins=False):
        start = time.perf_counter()
        try:
            return plan(batch, on_twins)
        finally:
            plan_ms.append((time.perf_counter() - start) * 1000)

    runner.plan = timed_plan
    try:
        for _ in range(steps):
            sync(device)
            t0 = time.perf_counter()
            batch = engine.scheduler.schedule()
            if batch.is_empty():
                break
            t1 = time.perf_counter()
            launched = engine._launch(batch)
            t2 = time.perf_counter()
            sync(device)
            t3 = time.perf_counter()
            engine._resolve(launched, placeholders=False)
            t4 = time.perf_counter()
            for name, ms in [("schedule", (t1 - t0) * 1000), ("plan", plan_ms[-1]),
                             ("launch", (t2 - t1) * 1000 - plan_ms[-1]), ("wait", (t3 - t2) * 1000),
                             ("resolve", (t4 - t3) * 1000), ("total", (t4 - t0) * 1000)]:  # fmt: skip
                times[name].append(ms)
    finally:
        del runner.plan  # the class's method again
    step_ms = []
    sync(device)
    for _ in range(steps):
        if not engine.has_work():
            break
        start = time.perf_counter()
        engine.step()
        step_ms.append((time.perf_counter() - start) * 1000)
    result = {k: statistics.median(v) for k, v in times.items()}
    if step_ms:
        result["step"] = statistics.median(step_ms)
    return result


def run_phases(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config(Path(tmp) / "m", SHAPES[args.shape])
        engine = make_bench_engine(args, model_dir, max(count for count, _ in args.workloads))
        run_ahead = "on" if engine.run_ahead else "off"
        print(
            f"{args.shape} on {args.device}, kernels {engine.kernel_mode}, run-ahead {run_ahead}", flush=True
        )
        for count, prompt_len in args.workloads:
            label = f"batch {count} prompt {prompt_len}"
            add_requests(engine, label, count, prompt_len, args.max_tokens, args.temperature, args.top_p)
            prefill(engine)
            result = phases(engine, args.steps)
            print(label, " ".join(f"{k}={v:.2f}ms" for k, v in result.items()), flush=True)
            while engine.has_work():
                engine.step()


def lm_head_precision(config: dict, device: str) -> None:
    """The fp32 lm_head three ways: cuBLAS IEEE fp32, Triton 3xTF32, cuBLAS bf16 — time and error vs fp64."""
    from epochserve.kernels.matmul_batch_invariant import matmul_batch_invariant

    if torch.device(device).type != "cuda":
        print("lm_head comparison: CUDA only (CUDA events, tensor cores), skipped", flush=True)
        return
    w = torch.randn(config["vocab_size"], config["hidden_size"], device=device) * 0.02
    w16 = w.bfloat16()
    for m in (1, 256):
        h = torch.randn(m, config["hidden_size"], device=device)
        exact = h.double() @ w.double().T
        variants = {
            "fp32": lambda h=h: h @ w.T,
            "tf32x3": lambda h=h: matmul_batch_invariant(h, w, fp32_precision="tf32x3"),
            "bf16": lambda h=h: (h.bfloat16() @ w16.T).float(),
        }
        for name, fn in variants.items():
            err = ((fn().double() - exact).norm() / exact.norm()).item()
            print(
                f"lm_head M={m} {name}: {cuda_time(fn) * 1000:.2f} ms, rel error vs fp64 {err:.2e}",
                flush=True,
            )


def profile_step(args: argparse.Namespace) -> None:
    """torch.profiler over a few decode steps of the last workload: the top host and device costs."""
    from torch.profiler import ProfilerActivity, profile

    count, prompt_len = args.workloads[-1]
    on_cuda = torch.device(args.device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_bench_engine(args, write_config(Path(tmp) / "m", SHAPES[args.shape]), count)
        add_requests(engine, "p", count, prompt_len, args.max_tokens, args.temperature, args.top_p)
        prefill(engine)
        with profile(activities=activities) as prof:
            for _ in range(PROFILE_STEPS):
                engine.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        if on_cuda:
            print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
        while engine.has_work():
            engine.step()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    # Each request must outlive its first token, the timed steps and as many engine steps.
    least = 2 * max(args.steps, PROFILE_STEPS) + 2
    if args.max_tokens < least:
        parser.error(f"--max-tokens must be at least {least} for {args.steps} steps")
    if args.profile:
        profile_step(args)
    elif args.lm_head:
        lm_head_precision(SHAPES[args.shape], args.device)
    else:
        run_phases(args)
        if not args.skip_lm_head:
            lm_head_precision(SHAPES[args.shape], args.device)


if __name__ == "__main__":
    main()
