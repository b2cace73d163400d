"""Where a decode step's time goes, on the 8B shape: host phases and the fp32 lm_head.
python bench/profile_steps.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from gpu_common import cuda_time, write_config


def phases(engine, steps: int) -> dict[str, float]:
    """Median ms per phase over `steps` engine steps, synchronizing at phase boundaries."""
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = engine.scheduler.schedule()
        t1 = time.perf_counter()
        plan, seqs = engine.runner.plan(batch)
        t2 = time.perf_counter()
        logits = engine.runner.run_plan(plan)
        t3 = time.perf_counter()
        torch.cuda.synchronize()
        t4 = time.perf_counter()
        for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += n
            engine.block_manager.register_computed(seq)
        out = engine.sampler.sample(logits, seqs)
        t5 = time.perf_counter()
        for seq, token in zip(seqs, out.token_ids, strict=True):
            seq.output_token_ids.append(token)
        t6 = time.perf_counter()
        for name, a, b in [("schedule", t0, t1), ("plan", t1, t2), ("launch", t2, t3), ("gpu wait", t3, t4),
                           ("sample", t4, t5), ("bookkeep", t5, t6), ("total", t0, t6)]:  # fmt: skip
            times[name].append((b - a) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    from fixtures.engine import make_engine, make_request

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_config(Path(tmp) / "m")
        engine = make_engine(model_dir, device="cuda", load_format="random", max_model_len=2048,
                             max_num_seqs=256, max_num_batched_tokens=8192)  # fmt: skip
        for label, count, prompt_len in (("W1 batch 1", 1, 128), ("W2 batch 256", 256, 512)):
            g = torch.Generator().manual_seed(0)
            for i in range(count):
                prompt = torch.randint(1000, 100000, (prompt_len,), generator=g).tolist()
                engine.add_request(make_request(f"{label}-{i}", prompt, engine.limits, temperature=0.0,
                                                max_tokens=100, ignore_eos=True))  # fmt: skip
            while any(
                s.num_generated_tokens == 0 for s in engine.scheduler.running + list(engine.scheduler.waiting)
            ):
                engine.step()  # prefill
            result = phases(engine, 30)
            print(label, " ".join(f"{k}={v:.2f}ms" for k, v in result.items()), flush=True)
            while engine.has_work():
                engine.step()
    lm_head_precision()


def lm_head_precision() -> None:
    """The fp32 lm_head three ways: cuBLAS IEEE fp32, Triton 3xTF32, cuBLAS bf16 — time and error vs fp64."""
    from epochserve.kernels.matmul_batch_invariant import matmul_batch_invariant

    w = torch.randn(128256, 4096, device="cuda") * 0.02
    w16 = w.bfloat16()
    for m in (1, 256):
        h = torch.randn(m, 4096, device="cuda")
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


def profile_w2_step() -> None:
    """torch.profiler over a few batch-256 decode steps: the top host and device costs."""
    from fixtures.engine import make_engine, make_request
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(write_config(Path(tmp) / "m"), device="cuda", load_format="random",
                             max_model_len=2048, max_num_seqs=256, max_num_batched_tokens=8192)  # fmt: skip
        for i in range(256):
            engine.add_request(make_request(f"p{i}", list(range(1000, 1512)), engine.limits, temperature=0.0,
                                            max_tokens=64, ignore_eos=True))  # fmt: skip
        while any(
            s.num_generated_tokens == 0 for s in engine.scheduler.running + list(engine.scheduler.waiting)
        ):
            engine.step()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                engine.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))


if __name__ == "__main__":
    if "--profile" in sys.argv:
        profile_w2_step()
    elif "--lm-head" in sys.argv:
        lm_head_precision()
    else:
        main()
