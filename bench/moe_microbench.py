"""fused_moe_triton against the PyTorch reference (fused_moe_torch) and the memory-bandwidth limit, at
decode batches of the Qwen3-30B-A3B MoE layer (128 experts, top-8, hidden 2048, width 768), bf16.

Limit: a layer call must read every expert it routes to once (w13 and w2 of each distinct expert
hit, plus the activations), so its floor is those bytes / the measured copy bandwidth (the same
HBM ceiling bench/decode_kernels_microbench.py uses). Calls rotate over LAYERS copies of the layer's
weights, so nothing stays in L2 between them. The kernel is timed inside a CUDA graph (as the engine
runs decode) and eagerly; the reference only eagerly (it synchronises with the host, so no graph
can capture it). Each is checked against the reference before it is timed.

  python bench/moe_microbench.py [--batches 1,64,256] [--sweep] [--gemv-sweep] [--json OUT]

Batches of at most 4 tokens also time routed_moe_gemv_triton (the path TritonOps takes for them;
its time includes the router's top-k, which the grouped path's does not); --gemv-sweep tries its
gate-up tiles (down at its default), then its down-and-combine tiles (gate-up at the best), and
prints the fastest of each.
  python bench/moe_microbench.py --tiny     # CPU, Triton interpreter, a tiny layer: checks it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

LAYERS = 4  # weight copies the calls rotate over
REPS = 8  # calls per captured graph
QWEN3_30B_A3B = dict(experts=128, top_k=8, hidden=2048, width=768, renormalize=True)
TINY = dict(experts=8, top_k=2, hidden=64, width=32, renormalize=True)
# (block_n, num_warps, num_stages) tried by --sweep; block_m 16 and block_k 64 stay (the K order).
SWEEP = [(32, 4, 4), (64, 4, 3), (64, 4, 5), (128, 4, 4), (128, 8, 3), (64, 8, 4)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", default=None, help="tokens per call (default 1,64,256; --tiny: 1,8)")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--tiny", action="store_true", help="CPU interpreter, tiny layer (a smoke run)")
    parser.add_argument("--sweep", action="store_true", help="also time other tiles (CUDA)")
    parser.add_argument("--gemv-sweep", action="store_true", help="tiles of the few-token path (CUDA)")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--json", help="write the numbers here")
    return parser


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def cuda_us(fn: Callable[[int], object], replays: int, graph: bool) -> float:
    """Median microseconds per fn(i) call: REPS calls per measurement, in a CUDA graph or eagerly."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(2):
            fn(i)  # compile outside any capture
    torch.cuda.current_stream().wait_stream(stream)
    run: Callable[[], object]
    if graph:
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            for i in range(REPS):
                fn(i)
        run = cuda_graph.replay
    else:

        def run() -> None:
            for i in range(REPS):
                fn(i)

    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / REPS)
    return statistics.median(times)


def make_layers(shape: dict[str, Any], dtype: torch.dtype, device: str, copies: int) -> list[tuple]:
    e, h, w = shape["experts"], shape["hidden"], shape["width"]
    return [
        (
            (torch.randn(e, 2 * w, h, device=device) / h**0.5).to(dtype),
            (torch.randn(e, h, w, device=device) / w**0.5).to(dtype),
        )
        for _ in range(copies)
    ]


def make_batch(shape: dict[str, Any], tokens: int, dtype: torch.dtype, device: str) -> tuple:
    from epochserve.kernels.fused_moe import topk_route

    x = torch.randn(tokens, shape["hidden"], device=device).to(dtype)
    logits = torch.randn(tokens, shape["experts"], device=device) * 2
    weights, ids = topk_route(logits, shape["top_k"], shape["renormalize"])
    return x, logits, weights, ids


def touched_bytes(shape: dict[str, Any], ids: torch.Tensor, element: int) -> int:
    """Weights of every distinct expert hit, plus x read and the output written."""
    distinct = int(torch.unique(ids).numel())
    per_expert = 3 * shape["width"] * shape["hidden"] * element
    return distinct * per_expert + 2 * ids.shape[0] * shape["hidden"] * element


def gemv_sweep(few: Callable[..., object], replays: int) -> dict[str, Any]:
    """Graph µs of the few-token path per gate-up tiles (down at its default), then per down tiles
    (gate-up at the best)."""
    from epochserve.kernels.fused_moe_gemv_triton import DOWN_TILES
    from epochserve.kernels.gemv_triton import GemvTiles

    def tiles(block_ns: tuple[int, ...], block_ks: tuple[int, ...], warps_stages: tuple) -> list[GemvTiles]:
        return [GemvTiles(n, k, w, s) for n in block_ns for k in block_ks for w, s in warps_stages]

    def timed(up: GemvTiles, dn: GemvTiles) -> float:
        try:
            return cuda_us(lambda i: few(i, up=up, dn=dn), replays, graph=True)
        except Exception as exc:  # e.g. a tile past the shared memory: not a candidate
            print(f"tiles up={up} down={dn}: {type(exc).__name__}", file=sys.stderr)
            return float("inf")

    up_times = {t: timed(t, DOWN_TILES) for t in tiles((8, 16, 32), (512, 1024), ((4, 3), (8, 2)))}
    best_up = min(up_times, key=up_times.__getitem__)
    # the down product with the combine: a program per (token, hidden tile), all k experts a tile
    down = tiles((1, 2, 4, 8), (256, 512, 1024), ((2, 4), (4, 3)))
    down_times = {t: timed(best_up, t) for t in down}
    best_down = min(down_times, key=down_times.__getitem__)
    return {
        "gate_up": {str(t): us for t, us in up_times.items()},
        "down": {str(t): us for t, us in down_times.items()},
        "best_gate_up": str(best_up), "best_down": str(best_down), "best_us": down_times[best_down],
        "default_down_us": up_times[best_up], "default_down": str(DOWN_TILES),
    }  # fmt: skip


def run_cuda(args: argparse.Namespace, batches: list[int], dtype: torch.dtype) -> dict[str, Any]:
    import triton
    from gpu_common import measure_ceilings

    from epochserve.kernels.fused_moe import fused_moe_torch
    from epochserve.kernels.fused_moe_gemv_triton import (
        DOWN_TILES,
        GATE_UP_TILES,
        MAX_TOKENS,
        routed_moe_gemv_triton,
    )
    from epochserve.kernels.fused_moe_triton import MoeTiles, fused_moe_triton, moe_tiles
    from epochserve.kernels.gemv_triton import GemvTiles

    shape = QWEN3_30B_A3B
    top_k, renormalize = shape["top_k"], shape["renormalize"]
    bandwidth = measure_ceilings()["hbm_bytes_per_s"]
    layers = make_layers(shape, dtype, "cuda", LAYERS)
    default = moe_tiles(shape["hidden"], shape["width"], dtype)
    rows = []
    for tokens in batches:
        x, logits, weights, ids = make_batch(shape, tokens, dtype, "cuda")
        w13, w2 = layers[0]
        err = rel_err(fused_moe_triton(x, w13, w2, weights, ids), fused_moe_torch(x, w13, w2, weights, ids))
        assert err < 1e-2, f"batch {tokens}: relative error {err:.2e} against the reference"
        nbytes = touched_bytes(shape, ids, x.element_size())
        limit_us = nbytes / bandwidth * 1e6

        def kernel(i: int, tiles: MoeTiles = default, batch: tuple = (x, weights, ids)) -> object:
            w13, w2 = layers[i % LAYERS]
            return fused_moe_triton(batch[0], w13, w2, batch[1], batch[2], tiles=tiles)

        def reference(i: int, batch: tuple = (x, weights, ids)) -> object:
            w13, w2 = layers[i % LAYERS]
            return fused_moe_torch(batch[0], w13, w2, batch[1], batch[2])

        row = {
            "tokens": tokens,
            "experts_touched": int(torch.unique(ids).numel()),
            "bytes_touched": nbytes,
            "limit_us": limit_us,
            "triton_graph_us": cuda_us(kernel, args.replays, graph=True),
            "triton_eager_us": cuda_us(kernel, args.replays, graph=False),
            "torch_eager_us": cuda_us(reference, args.replays, graph=False),
        }
        if tokens <= MAX_TOKENS:
            out, few_weights, few_ids = routed_moe_gemv_triton(x, logits, w13, w2, top_k, renormalize)
            err = rel_err(out, fused_moe_torch(x, w13, w2, few_weights, few_ids))
            assert err < 1e-2, f"few-token path, batch {tokens}: relative error {err:.2e}"

            def few(
                i: int,
                up: GemvTiles = GATE_UP_TILES,
                dn: GemvTiles = DOWN_TILES,
                b: tuple = (x, logits),
            ):
                w13, w2 = layers[i % LAYERS]
                return routed_moe_gemv_triton(
                    b[0], b[1], w13, w2, top_k, renormalize, gate_up=up, down_tiles=dn
                )

            row["gemv_graph_us"] = cuda_us(few, args.replays, graph=True)
            if args.gemv_sweep:
                row["gemv_sweep"] = gemv_sweep(few, args.replays)
        if args.sweep:
            row["sweep_graph_us"] = {}
            for block_n, warps, stages in SWEEP:
                tiles = MoeTiles(default.block_m, block_n, default.block_k, warps, stages)
                us = cuda_us(lambda i, t=tiles: kernel(i, t), args.replays, graph=True)
                row["sweep_graph_us"][f"n{block_n}-w{warps}-s{stages}"] = us
        rows.append(row)
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": args.dtype,
        "shape": shape,
        "tiles": str(default),
        "copy_bandwidth_bytes_per_s": bandwidth,
        "batches": rows,
    }


def run_tiny(batches: list[int], dtype: torch.dtype) -> dict[str, Any]:
    """The interpreter on a tiny layer: the call runs and agrees with the reference; wall times only."""
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel module defines its kernels
    from epochserve.kernels.fused_moe import fused_moe_torch
    from epochserve.kernels.fused_moe_triton import fused_moe_triton

    dtype = torch.float16 if dtype == torch.bfloat16 else dtype  # the interpreter has no bf16
    shape = TINY
    (w13, w2), rows = make_layers(shape, dtype, "cpu", 1)[0], []
    for tokens in batches:
        x, _, weights, ids = make_batch(shape, tokens, dtype, "cpu")
        start = time.perf_counter()
        out = fused_moe_triton(x, w13, w2, weights, ids)
        triton_s = time.perf_counter() - start
        start = time.perf_counter()
        ref = fused_moe_torch(x, w13, w2, weights, ids)
        torch_s = time.perf_counter() - start
        err = rel_err(out, ref)
        assert err < 2e-3, f"batch {tokens}: relative error {err:.2e} against the reference"
        rows.append({"tokens": tokens, "rel_err": err, "triton_interpreter_s": triton_s, "torch_s": torch_s})
    return {"device": "cpu (Triton interpreter)", "dtype": str(dtype), "shape": shape, "batches": rows}


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['device']}  {result['dtype']}  {result['shape']}")
    if "copy_bandwidth_bytes_per_s" not in result:
        for row in result["batches"]:
            print(f"batch {row['tokens']:4d}: rel err {row['rel_err']:.1e}, interpreter "
                  f"{row['triton_interpreter_s']:.2f} s, torch {row['torch_s'] * 1e3:.1f} ms")  # fmt: skip
        return
    bandwidth = result["copy_bandwidth_bytes_per_s"]
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; tiles {result['tiles']}")
    print(f"{'batch':>5} {'experts':>7} {'MB':>7} {'limit us':>8} {'graph us':>9} {'of limit':>8} "
          f"{'eager us':>9} {'torch us':>9} {'vs torch':>8}")  # fmt: skip
    for r in result["batches"]:
        print(f"{r['tokens']:5d} {r['experts_touched']:7d} {r['bytes_touched'] / 1e6:7.1f} "
              f"{r['limit_us']:8.1f} "
              f"{r['triton_graph_us']:9.1f} {r['limit_us'] / r['triton_graph_us']:8.0%} "
              f"{r['triton_eager_us']:9.1f} {r['torch_eager_us']:9.1f} "
              f"{r['torch_eager_us'] / r['triton_graph_us']:7.1f}x")  # fmt: skip
        for name, us in r.get("sweep_graph_us", {}).items():
            print(f"      tiles {name}: {us:.1f} us ({r['limit_us'] / us:.0%} of limit)")
        if "gemv_graph_us" in r:
            us = r["gemv_graph_us"]
            print(
                f"      few-token path with top-k (default tiles): {us:.1f} us "
                f"({r['limit_us'] / us:.0%} of limit)"
            )
        if "gemv_sweep" in r:
            sweep = r["gemv_sweep"]
            print(
                f"      few-token sweep: best gate-up {sweep['best_gate_up']}, down {sweep['best_down']}: "
                f"{sweep['best_us']:.1f} us ({r['limit_us'] / sweep['best_us']:.0%} of limit)"
            )
            for part in ("gate_up", "down"):
                ranked = sorted(sweep[part].items(), key=lambda kv: kv[1])[:6]
                print(f"        {part} fastest: " + "; ".join(f"{k} {v:.1f}" for k, v in ranked))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    batches = [int(b) for b in (args.batches or ("1,8" if args.tiny else "1,64,256")).split(",")]
    torch.manual_seed(0)
    if args.tiny or not torch.cuda.is_available():
        result = run_tiny(batches, dtype)
    else:
        result = run_cuda(args, batches, dtype)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print_table(result)
    return result


if __name__ == "__main__":
    main()
