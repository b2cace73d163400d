"""The sampler's cost per engine step on a GPU, at Llama-3's vocabulary (128,256 logits a row).

Times, at 1, 64 and 256 rows: the sorted path's top-k/top-p/min-p filter with its fp64 boundary beside
the same filter with fp32 prefix sums (the rounding-decided boundary it replaced), and the whole
Sampler.sample (launch + collect) for temperature 1 with and without top_p 0.95, on the sorted path
(filter_logits + int64 noise kernels) and on the fused sort-free kernels (kernels/sampling_triton.py)
that replaced it. Medians of CUDA-event timings. Usage: python bench/sampler_microbench.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from epochserve.sampling import SamplingParams
from epochserve.worker.engine.sampler import Sampler, filter_logits
from epochserve.worker.engine.sequence import Sequence
from epochserve.worker.layers.ops import TritonOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import cuda_time

VOCAB = 128_256


def filter_fp32_prefix_sums(logits, top_k, top_p, min_p):
    """The filter with fp32 probabilities and prefix sums: the same work in half the bytes."""
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(vocab, device=logits.device)
    remove = ranks[None, :] >= torch.where(top_k > 0, top_k, vocab)[:, None]
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    remove[:, 1:] |= (probs.cumsum(dim=-1)[:, :-1] >= top_p[:, None]) & (top_p[:, None] < 1.0)
    remove |= probs < min_p[:, None] * probs[:, :1]
    remove[:, 0] = False
    return torch.empty_like(logits).scatter_(1, order, sorted_logits.masked_fill(remove, float("-inf")))


class SortedTritonOps(TritonOps):
    """The GPU path before the fused kernels: Triton everywhere but sampling, which sorts."""

    __slots__ = ()

    def sample_rows(self, *args, **kwargs):
        return None


def median_ms(fn) -> float:
    return 1000 * cuda_time(fn, repeats=30, warmup=3)


def sequences(num: int, params: SamplingParams) -> list[Sequence]:
    return [
        Sequence(seq_id=i, request_id=str(i), sample_index=0, prompt_token_ids=[1], sampling=params,
                 max_tokens=8, seed=i, policy_version=0)
        for i in range(num)
    ]  # fmt: skip


def measure(num: int, fused: Sampler, sorted_path: Sampler) -> dict[str, float]:
    logits = torch.randn(num, VOCAB, device="cuda") * 3
    filters = (
        torch.zeros(num, dtype=torch.int64, device="cuda"),
        torch.full((num,), 0.95, device="cuda"),
        torch.zeros(num, device="cuda"),
    )
    t1, t1_top_p = sequences(num, SamplingParams()), sequences(num, SamplingParams(top_p=0.95))
    return {
        "rows": num,
        "filter_fp64_ms": median_ms(lambda: filter_logits(logits, *filters)),
        "filter_fp32_ms": median_ms(lambda: filter_fp32_prefix_sums(logits, *filters)),
        "sample_t1_ms": median_ms(lambda: sorted_path.sample(logits, t1)),
        "sample_t1_top_p_ms": median_ms(lambda: sorted_path.sample(logits, t1_top_p)),
        "fused_t1_ms": median_ms(lambda: fused.sample(logits, t1)),
        "fused_t1_top_p_ms": median_ms(lambda: fused.sample(logits, t1_top_p)),
    }


def kernel_breakdown(num: int, params: SamplingParams, sampler: Sampler) -> list[tuple[str, float, int]]:
    """Device time per kernel name (ms, calls) of one Sampler.sample, from the profiler: the GPU's
    share of the wall time above (the rest is the host launching)."""
    logits = torch.randn(num, VOCAB, device="cuda") * 3
    seqs = sequences(num, params)
    sampler.sample(logits, seqs)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        sampler.sample(logits, seqs)
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(((e.key, e.device_time_total / 1000, e.count) for e in events), key=lambda r: -r[1])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    fused, sorted_path = Sampler(ops=TritonOps()), Sampler(ops=SortedTritonOps())
    rows = [measure(num, fused, sorted_path) for num in (1, 64, 256)]
    print(f"{torch.cuda.get_device_name()}, vocabulary {VOCAB:,}; medians in ms")
    print("sorted path: filter with fp64 / fp32 prefix sums, Sampler.sample at T=1 and T=1 + top_p 0.95")
    header = ("rows", "filter fp64", "filter fp32", "fp64 cost", "sample T=1", "+top_p")
    print(" ".join(f"{h:>12}" for h in header))
    for r in rows:
        extra = r["filter_fp64_ms"] / r["filter_fp32_ms"] - 1
        print(f"{r['rows']:>12} {r['filter_fp64_ms']:>12.3f} {r['filter_fp32_ms']:>12.3f} {extra:>12.1%} "
              f"{r['sample_t1_ms']:>12.3f} {r['sample_t1_top_p_ms']:>12.3f}")  # fmt: skip
    print("Sampler.sample, sorted path vs fused sort-free kernels")
    header = ("rows", "T=1 sorted", "T=1 fused", "speedup", "top_p sorted", "top_p fused", "speedup")
    print(" ".join(f"{h:>12}" for h in header))
    for r in rows:
        t1, top_p = (r["sample_t1_ms"], r["fused_t1_ms"]), (r["sample_t1_top_p_ms"], r["fused_t1_top_p_ms"])
        print(f"{r['rows']:>12} {t1[0]:>12.3f} {t1[1]:>12.3f} {t1[0] / t1[1]:>11.1f}x "
              f"{top_p[0]:>12.3f} {top_p[1]:>12.3f} {top_p[0] / top_p[1]:>11.1f}x")  # fmt: skip
    for label, params in (("T=1", SamplingParams()), ("T=1 + top_p 0.95", SamplingParams(top_p=0.95))):
        kernels = kernel_breakdown(256, params, fused)
        total = sum(ms for _, ms, _ in kernels)
        print(f"fused, 256 rows, {label}: {total:.3f} ms on the device; per kernel (ms, calls):")
        for name, ms, calls in kernels[:8]:
            print(f"    {ms:8.3f} {calls:4d}  {name[:70]}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
