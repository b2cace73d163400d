"""Decode paged-attention microbenchmark: achieved bytes/s over the GPU's measured copy bandwidth.

Shape: Llama-3-8B attention (32 query heads, 8 kv heads, head_dim 128, bf16, block size 16). For each
context (1k..32k) the batch is chosen so that one call reads ≥ 1 GiB of keys and values, every
sequence at that context, pages in a shuffled order. Bytes counted per call: keys + values read once,
queries read and outputs written (partial-state traffic of the split schedule is overhead, not work).
Contenders, each checked against SDPA on the same data before it is timed:
  - triton-auto: paged_attention_triton, partition length from the batch (the fast default);
  - triton-invariant: fixed_split_tokens=BATCH_INVARIANT_SPLIT_TOKENS (the batch-invariant mode);
  - triton-nosplit: one partition per sequence (what split-K buys);
  - sdpa: torch SDPA over a contiguous cache (query heads folded per kv head), the peer;
  - flash-attn: flash_attn_with_kvcache over a contiguous cache, when the package is installed.
Timing: triton.testing.do_bench medians; HBM bandwidth from a 2 GiB device-to-device copy.
Usage: python bench/attention_microbench.py [--contexts 1024,...] [--sweep] [--prefill] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import triton

from epochserve.kernels.paged_attention_triton import (
    BATCH_INVARIANT_SPLIT_TOKENS,
    AttentionTiles,
    decode_tiles,
    paged_attention_triton,
)

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
GROUP = NUM_HEADS // NUM_KV_HEADS
DTYPE = torch.bfloat16
KV_BYTES_TARGET = 1 << 30


def median_ms(fn: Callable[[], object]) -> float:
    return float(triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median"))


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Bytes/s of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    return 2 * nbytes / (median_ms(lambda: dst.copy_(src)) * 1e-3)


class DecodeCase:
    """One batch of decode queries over a shuffled paged cache, plus contiguous copies for the peers."""

    def __init__(self, context: int, seed: int = 0) -> None:
        self.context = context
        self.batch = math.ceil(KV_BYTES_TARGET / (context * NUM_KV_HEADS * HEAD_DIM * 2 * DTYPE.itemsize))
        pages = context // BLOCK_SIZE
        gen = torch.Generator(device="cuda").manual_seed(seed)
        shape = (self.batch * pages, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
        self.key_cache = torch.randn(shape, device="cuda", dtype=DTYPE, generator=gen)
        self.value_cache = torch.randn(shape, device="cuda", dtype=DTYPE, generator=gen)
        perm = torch.randperm(self.batch * pages, device="cuda", generator=gen)
        self.block_tables = perm.view(self.batch, pages).to(torch.int32)
        self.seq_lens = torch.full((self.batch,), context, device="cuda", dtype=torch.int32)
        self.query_start_loc = torch.arange(self.batch + 1, device="cuda", dtype=torch.int32)
        self.query = torch.randn(self.batch, NUM_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE, generator=gen)
        self.scale = HEAD_DIM**-0.5
        self.bytes = 2 * self.batch * context * NUM_KV_HEADS * HEAD_DIM * DTYPE.itemsize
        self.bytes += 2 * self.query.numel() * DTYPE.itemsize

    def contiguous_kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[batch, context, kv_heads, head_dim] copies of the same keys and values."""
        shape = (self.batch, self.context, NUM_KV_HEADS, HEAD_DIM)
        return self.key_cache[self.block_tables.long()].view(shape), self.value_cache[
            self.block_tables.long()
        ].view(shape)

    def triton(self, fixed: int | None, tiles: AttentionTiles | None = None) -> Callable[[], torch.Tensor]:
        out = torch.empty_like(self.query)
        return lambda: paged_attention_triton(
            self.query, self.key_cache, self.value_cache, self.block_tables, self.seq_lens,
            self.query_start_loc, self.scale, max_query_len=1, max_seq_len=self.context,
            fixed_split_tokens=fixed, tiles=tiles, out=out,
        )  # fmt: skip


def sdpa_peer(case: DecodeCase, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor]:
    # GQA decode as plain attention: the GROUP query heads of a kv head act as GROUP query rows.
    q = case.query.view(case.batch, NUM_KV_HEADS, GROUP, HEAD_DIM)
    kt, vt = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    return lambda: F.scaled_dot_product_attention(q, kt, vt, scale=case.scale).view(
        case.batch, NUM_HEADS, HEAD_DIM
    )


def flash_peer(case: DecodeCase, k: torch.Tensor, v: torch.Tensor) -> Callable[[], torch.Tensor] | None:
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_with_kvcache

    q = case.query.unsqueeze(1)
    return lambda: flash_attn_with_kvcache(
        q, k, v, cache_seqlens=case.seq_lens, softmax_scale=case.scale
    ).squeeze(1)


def check(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    """Correct first: a contender that disagrees with SDPA is not timed."""
    err = float((out.float() - ref.float()).norm() / ref.float().norm())
    if not math.isfinite(err) or err > 1e-2:
        raise AssertionError(f"{name}: relative error {err:.2e} against SDPA")


def run_context(context: int, bandwidth: float, sweep: bool) -> dict[str, Any]:
    case = DecodeCase(context)
    k, v = case.contiguous_kv()
    contenders: dict[str, Callable[[], torch.Tensor] | None] = {
        "triton-auto": case.triton(None),
        "triton-invariant": case.triton(BATCH_INVARIANT_SPLIT_TOKENS),
        "triton-nosplit": case.triton(math.ceil(context / 64) * 64),
        "sdpa": sdpa_peer(case, k, v),
        "flash-attn": flash_peer(case, k, v),
    }
    if sweep:
        for block_n, stages, warps in [(n, s, w) for n in (32, 64, 128) for s in (2, 3, 5) for w in (4, 8)]:
            tiles = AttentionTiles(decode_tiles(GROUP).block_m, block_n, warps, stages)
            contenders[f"sweep n{block_n} s{stages} w{warps}"] = case.triton(None, tiles)
    ref = contenders["sdpa"]()  # type: ignore[misc]
    row: dict[str, Any] = {"context": context, "batch": case.batch, "bytes": case.bytes}
    for name, fn in contenders.items():
        if fn is None:
            continue
        try:
            check(name, fn(), ref)
            ms = median_ms(fn)
        except Exception as exc:  # a sweep variant may not fit in shared memory: report, go on
            row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        row[name] = {
            "us": ms * 1e3,
            "bytes_per_s": case.bytes / (ms * 1e-3),
            "of_hbm": case.bytes / (ms * 1e-3) / bandwidth,
        }
    del case, k, v
    torch.cuda.empty_cache()
    return row


def run_prefill(bandwidth: float) -> dict[str, Any]:
    """4 prompts × 4096 tokens, causal, prefill tiles vs SDPA (flash) on contiguous q/k/v: TFLOP/s."""
    seqs, length = 4, 4096
    pages = length // BLOCK_SIZE
    q = torch.randn(seqs * length, NUM_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    k = torch.randn(seqs * pages, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, device="cuda", dtype=DTYPE)
    v = torch.randn_like(k)
    tables = torch.arange(seqs * pages, device="cuda", dtype=torch.int32).view(seqs, pages)
    lens = torch.full((seqs,), length, device="cuda", dtype=torch.int32)
    starts = torch.arange(0, seqs * length + 1, length, device="cuda", dtype=torch.int32)
    run = lambda: paged_attention_triton(  # noqa: E731
        q, k, v, tables, lens, starts, HEAD_DIM**-0.5, max_query_len=length, max_seq_len=length
    )
    qs = q.view(seqs, length, NUM_HEADS, HEAD_DIM).transpose(1, 2)
    ks = k.view(seqs, length, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(GROUP, 1)
    vs = v.view(seqs, length, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(GROUP, 1)
    peer = lambda: F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=HEAD_DIM**-0.5)  # noqa: E731
    check("prefill", run(), peer().transpose(1, 2).reshape(seqs * length, NUM_HEADS, HEAD_DIM))
    flops = 4 * seqs * NUM_HEADS * HEAD_DIM * length * length / 2  # causal: half of QKᵀ and PV
    return {name: flops / (median_ms(fn) * 1e-3) / 1e12 for name, fn in (("triton", run), ("sdpa", peer))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument(
        "--sweep", action="store_true", help="also time tile variants (block_n, stages, warps)"
    )
    parser.add_argument("--prefill", action="store_true", help="also time a causal prefill against SDPA")
    parser.add_argument("--json", help="write all numbers here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    rows = [run_context(int(c), bandwidth, args.sweep) for c in args.contexts.split(",")]
    prefill = run_prefill(bandwidth) if args.prefill else None
    result = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "decode": rows,
        "prefill_tflops": prefill,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print_table(result)


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['device']}  torch {result['torch']}  triton {result['triton']}  {result['date']}")
    print(f"HBM copy bandwidth: {result['copy_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s (read + write)")
    if result["prefill_tflops"]:
        print(
            "prefill 4x4096 causal TFLOP/s: "
            + "  ".join(f"{k} {v:.0f}" for k, v in result["prefill_tflops"].items())
        )
    rows = result["decode"]
    sweeps = sorted({k for r in rows for k in r if k.startswith("sweep")})
    for r in rows:  # best sweep variant per context, then the main table
        timed = [(r[k]["of_hbm"], k) for k in sweeps if "of_hbm" in r[k]]
        if timed:
            print(f"  {r['context']:>6}: best {max(timed)[1]} at {max(timed)[0]:.1%} of HBM")
    names = ["triton-auto", "triton-invariant", "triton-nosplit", "sdpa", "flash-attn"]
    names = [n for n in names if any(n in r for r in rows)]
    print("decode, % of HBM copy bandwidth (µs per call):")
    print(f"{'context':>8} {'batch':>6} {'GiB':>5} " + " ".join(f"{n:>22}" for n in names))
    for r in rows:
        cells = []
        for n in names:
            cell = r.get(n, {})
            cells.append(f"{cell['of_hbm']:>10.1%} ({cell['us']:>8.1f})" if "us" in cell else f"{'-':>22}")
        print(
            f"{r['context']:>8} {r['batch']:>6} {r['bytes'] / 2**30:>5.2f} "
            + " ".join(f"{c:>22}" for c in cells)
        )


if __name__ == "__main__":
    main()
