"""W4 router benchmark (docs/design.md §8): latency the router adds, and concurrent streams through it.

Brings up a local cluster (etcd, coordinator, one worker on a tiny random Llama, one router) and:
  1. latency: the same short request sent one at a time, alternating straight to the worker's
     Worker service and through the router's Generation service, with the same raw gRPC client
     code; prints p50/p99 of the first message (TTFT) and of the end of each, and the router's
     added p50/p99 (router − direct). With --compare-grpc-session, also through a second router
     that reaches the worker over gRPC Session instead of the session link. Two request shapes:
     1 new token (the fixed cost per request) and 16 (plus the cost per chunk, which on a 2-core
     machine competes with the worker's own CPU).
  2. streams: --streams concurrent requests opened at once through the router (asyncio client),
     counting errors and the router's peak in-flight requests (its Prometheus endpoint).
Usage: python bench/router_overhead.py [--requests 400] [--streams 1000] [--compare-grpc-session]
       [--json OUT]
Numbers go to docs/benchmarks.md (device, date, commit); they are not pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import torch

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.client.errors import GenerationError
from epochserve.client.generation import AsyncGenerationClient
from epochserve.proto.v1 import common_pb2, generation_pb2_grpc, worker_pb2_grpc
from epochserve.sampling import SamplingParams

PROMPT = [5, 17, 33, 9, 100, 200, 300, 7]


def tiny_llama(out_dir: Path) -> Path:
    """A seeded random 2-layer Llama (fp32 safetensors): the worker's cost stays small and steady."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, eos_token_id=2, bos_token_id=1,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out_dir)
    return out_dir


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def time_one(call: Any, request: common_pb2.GenerateRequest) -> tuple[float, float]:
    """(seconds to the first message, seconds to the end) of one streamed request."""
    start = time.perf_counter()
    first = None
    for _ in call(request, timeout=30):
        if first is None:
            first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(
    worker: str, routers: dict[str, tuple[str, int]], num_requests: int, max_tokens: int
) -> dict[str, float]:
    """Milliseconds (first message and end to end) of `num_requests` sequential requests straight
    to the worker and through each router ({name: (address, pid)}), alternating so that all see
    the same machine state; and each router's CPU time per routed request (it idles meanwhile)."""
    sampling = common_pb2.SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    channels = [grpc.insecure_channel(worker), *(grpc.insecure_channel(a) for a, _ in routers.values())]
    calls = {"direct": worker_pb2_grpc.WorkerStub(channels[0]).Generate}
    for name, channel in zip(routers, channels[1:], strict=True):
        calls[name] = generation_pb2_grpc.GenerationStub(channel).Generate
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    cpu = dict.fromkeys(routers, 0.0)
    for i in range(num_requests + 20):  # the first 20 of each warm up
        for name, call in calls.items():
            request = common_pb2.GenerateRequest(
                request_id=f"lat-{name}-{i}", prompt_token_ids=PROMPT, sampling=sampling
            )
            pid = routers[name][1] if name in routers else None
            cpu_before = cpu_seconds(pid) if pid else 0.0
            measured = time_one(call, request)
            if i >= 20:
                times[name].append(measured)
                if pid:
                    cpu[name] += cpu_seconds(pid) - cpu_before
    for channel in channels:
        channel.close()
    result: dict[str, float] = {}
    for name in routers:
        result[f"{name}_cpu_ms_per_request"] = 1000 * cpu[name] / num_requests
    for which, index in (("ttft", 0), ("e2e", 1)):
        for name, values in times.items():
            for q in (50, 99):
                result[f"{name}_{which}_p{q}_ms"] = 1000 * percentile([v[index] for v in values], q)
        for name in routers:
            for q in (50, 99):
                added = result[f"{name}_{which}_p{q}_ms"] - result[f"direct_{which}_p{q}_ms"]
                result[f"added_{which}_p{q}_ms" if name == "router" else f"{name}_added_{which}_p{q}_ms"] = (
                    added
                )
    return result


async def streams(router: str, metrics_port: int, num_streams: int, max_tokens: int) -> dict[str, Any]:
    """num_streams requests opened at once through the router; errors by status, peak in flight."""
    peak = 0
    stop = asyncio.Event()

    async def watch_inflight() -> None:
        nonlocal peak
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        while not stop.is_set():
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
            inflight = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("epochserve_router_inflight_requests{")
            )
            peak = max(peak, int(inflight))
            await asyncio.sleep(0.2)

    errors: dict[str, int] = {}
    num_tokens = 0
    async with AsyncGenerationClient(router, timeout=600) as client:
        sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=1.0, seed=1)

        async def one(i: int) -> None:
            nonlocal num_tokens
            try:
                result = await client.generate(PROMPT[: 3 + i % 6], sampling, request_id=f"stream-{i}")
                num_tokens += sum(len(s.token_ids) for s in result.samples)
            except GenerationError as exc:
                errors[exc.code.name] = errors.get(exc.code.name, 0) + 1

        watcher = asyncio.ensure_future(watch_inflight())
        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(num_streams)))
        elapsed = time.perf_counter() - start
        stop.set()
        await watcher
    return {
        "streams": num_streams,
        "errors": errors,
        "peak_inflight_at_router": peak,
        "seconds": elapsed,
        "output_tokens_per_s": num_tokens / elapsed,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per path and shape")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams through the router")
    parser.add_argument("--stream-tokens", type=int, default=16, help="new tokens per concurrent stream")
    parser.add_argument(
        "--compare-grpc-session",
        action="store_true",
        help="also route through a second router that reaches the worker over gRPC Session",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = LocalClusterSpec(
            model_dir=tiny_llama(root / "model"),
            workdir=root / "cluster",
            worker_args=("--max-num-seqs", "256", "--block-size", "16"),
            num_routers=1,
            fast_etcd=True,
        )
        with LocalCluster(spec) as cluster:
            worker, router = cluster.workers[0].address, cluster.router_address
            results: dict[str, Any] = {"machine": platform.processor() or platform.machine()}
            routers = {"router": (router, cluster.routers[0].process.pid)}  # type: ignore[union-attr]
            if args.compare_grpc_session:
                old = cluster.add_router("--no-session-link")
                routers["grpc_session"] = (old.address, old.process.pid)  # type: ignore[union-attr]
            for max_tokens in (1, 16):
                results[f"latency_{max_tokens}_token"] = latency(worker, routers, args.requests, max_tokens)
                print(
                    f"latency, {max_tokens} new token(s):", json.dumps(results[f"latency_{max_tokens}_token"])
                )
            metrics_port = int(cluster.routers[0].info["metrics_port"])
            results["streams"] = asyncio.run(streams(router, metrics_port, args.streams, args.stream_tokens))
            print("concurrent streams:", json.dumps(results["streams"]))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
