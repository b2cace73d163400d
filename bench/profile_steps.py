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
    w = torch.randn(128256, 4096, device="cuda")
    w16 = w.bfloat16()
    for m in (1, 256):
        h = torch.randn(m, 4096, device="cuda")
        fp32 = cuda_time(lambda h=h: h @ w.T)
        bf16 = cuda_time(lambda h=h: h.bfloat16() @ w16.T)
        print(f"lm_head M={m}: fp32 {fp32 * 1000:.2f} ms, bf16 {bf16 * 1000:.2f} ms")


if __name__ == "__main__":
    main()
