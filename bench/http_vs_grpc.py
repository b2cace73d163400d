"""The HTTP front's overhead: one workload through the router's gRPC Generation service and through its
HTTP front (docs/http.md), output tokens per second for each.

Brings up a local cluster (etcd, coordinator, one worker, one router with the HTTP front; the model
directory's tokenizer) and sends the same batch of requests, all at once, down four paths:

    grpc final    AsyncGenerationClient, output mode FINAL (one message per sample)
    http whole    POST /v1/completions, non-streaming (the front asks FINAL too)
    grpc stream   AsyncGenerationClient, output mode STREAM
    http stream   POST /v1/completions with "stream": true (server-sent events; STREAM)

The HTTP requests go through the official openai client and carry the prompt as text, as OpenAI
clients do: the router tokenizes it and detokenizes every output token, which is part of what the
front costs. The gRPC requests carry the same prompt's ids. Every request has a seed and ignore_eos
with a fixed max_tokens (or, with --min-new-tokens, request i's own, drawn with seed i: RL outputs
vary in length), so both paths generate the same tokens and the same number of them. Paths
are interleaved round by round after a warm-up round; each path's median round is reported, and
HTTP's throughput as a share of gRPC's in the same output mode (the median of the rounds' own
ratios).

Usage: python bench/http_vs_grpc.py [--model DIR] [--weights real|random|tiny] [--device cpu|cuda]
       [--tp N] [--requests 32] [--n 2] [--new-tokens 48 [--min-new-tokens 16]] [--rounds 3]
       [--worker-arg=--max-num-seqs=256 ...] [--router-arg=--http-processes=4 ...]
       [--client-processes 4] [--modes final,stream] [--json OUT]
       [--front-only [--profile OUT]]
The default model is the bundled SmolLM2-135M-Instruct. --weights random needs only --model's
config.json and tokenizer (random weights of its shape); tiny: a tiny random Llama with the same
tokenizer, so that the engine costs little next to the router. --router-arg passes a flag to the
router (`--router-arg=--http-processes=4`: the HTTP front in 4 processes of their own, docs/http.md).
Numbers go to docs/benchmarks.md (machine, date, commit); they are not pass/fail.

--front-only measures the HTTP front alone, without a cluster: the real app and tokenizer in a
process of their own, on a backend that answers at once (InstantBackend), so that the front's own
work is all there is; it reports that process's CPU time per output token beside the throughput,
and --profile writes its cProfile stats (`python -m pstats OUT`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import openai
import psutil

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.client.generation import AsyncGenerationClient
from epochserve.proto.convert import OutputMode
from epochserve.proto.v1 import common_pb2
from epochserve.router.attempt import Send
from epochserve.sampling import ModelLimits, SamplingParams

# Prompts of a few dozen tokens; request i uses PROMPTS[i % len(PROMPTS)] and seed i.
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain, step by step, how a bicycle stays upright while it is moving forward.",
    "List the planets of the solar system and one surprising fact about each of them.",
    "Describe the water cycle to a curious ten-year-old, using an everyday example.",
]
PATHS = ("grpc final", "http whole", "grpc stream", "http stream")
MODE_PATHS = {"final": PATHS[:2], "stream": PATHS[2:]}  # --modes: the paths of each output mode
CPU_GROUPS = ("router", "worker", "clients")  # whose CPU time a round reports, per output token


@dataclass(frozen=True, slots=True)
class Finished:
    """A round's (or one client's share of it) output tokens, and when its first and last request
    completed (time.monotonic(), one clock for every process of this machine). Every request asks for
    the same tokens and they run together, so they end in the same engine step: what separates the
    first completion from the last is the work each path does after the engine, per response."""

    num_tokens: int
    first_done: float
    last_done: float

    @staticmethod
    def of(parts: list[Finished]) -> Finished:
        first, last = min(p.first_done for p in parts), max(p.last_done for p in parts)
        return Finished(sum(p.num_tokens for p in parts), first, last)


async def completed(requests: list[Awaitable[int]]) -> Finished:
    """Run `requests` (each returns its tokens) at once; their tokens and completion times."""

    async def one(request: Awaitable[int]) -> Finished:
        num_tokens = await request
        now = time.monotonic()
        return Finished(num_tokens, now, now)

    return Finished.of(await asyncio.gather(*(one(r) for r in requests)))


@dataclass(frozen=True, slots=True)
class Workload:
    num_requests: int
    n: int
    new_tokens: int
    temperature: float
    prompt_ids: list[list[int]]  # PROMPTS tokenized as the router does (tokenizer(prompt))
    min_new_tokens: int = 0  # > 0: request i's length is drawn from [this, new_tokens]

    def prompt(self, i: int) -> tuple[str, list[int]]:
        return PROMPTS[i % len(PROMPTS)], self.prompt_ids[i % len(PROMPTS)]

    def max_tokens(self, i: int) -> int:
        """Request i's tokens a sample: new_tokens, or drawn with seed i (the same on every path)."""
        if self.min_new_tokens <= 0:
            return self.new_tokens
        return random.Random(i).randint(self.min_new_tokens, self.new_tokens)

    @property
    def num_tokens(self) -> int:
        return self.n * sum(self.max_tokens(i) for i in range(self.num_requests))


async def grpc_round(
    client: AsyncGenerationClient, work: Workload, mode: OutputMode, share: range
) -> Finished:
    """This client's share of the requests, all at once, through the Generation service."""

    async def one(i: int) -> int:
        sampling = SamplingParams(
            temperature=work.temperature, max_tokens=work.max_tokens(i), ignore_eos=True, seed=i
        )
        result = await client.generate(work.prompt(i)[1], sampling, n=work.n, output_mode=mode)
        return sum(len(sample.token_ids) for sample in result.samples)

    return await completed([one(i) for i in share])


async def http_round(
    client: openai.AsyncOpenAI, work: Workload, model: str, stream: bool, share: range
) -> Finished:
    """This client's share of the requests, all at once, through POST /v1/completions (the official
    openai client); the tokens counted are `token_ids` (the RL extension) of every choice or streamed
    chunk."""

    async def one(i: int) -> int:
        response = await client.completions.create(
            model=model, prompt=work.prompt(i)[0], n=work.n, max_tokens=work.max_tokens(i),
            temperature=work.temperature, seed=i, stream=stream, extra_body={"ignore_eos": True},
        )  # fmt: skip
        if not stream:
            return sum(len(choice.token_ids) for choice in response.choices)  # type: ignore[attr-defined]
        return sum([len(c.token_ids) async for chunk in response for c in chunk.choices])  # type: ignore[attr-defined,union-attr]

    return await completed([one(i) for i in share])


@dataclass(frozen=True, slots=True)
class Timed:
    num_tokens: int
    seconds: float  # the whole round
    first_done: float  # seconds from the round's start to its first completed request
    last_done: float


async def timed(round_: Callable[[], Awaitable[Finished]]) -> Timed:
    start = time.monotonic()
    done = await round_()
    end = time.monotonic()
    return Timed(done.num_tokens, end - start, done.first_done - start, done.last_done - start)


def path_rounds(
    grpc_client: AsyncGenerationClient, http: openai.AsyncOpenAI, work: Workload, model: str, share: range
) -> dict[str, Callable[[], Awaitable[Finished]]]:
    return {
        "grpc final": lambda: grpc_round(grpc_client, work, OutputMode.FINAL, share),
        "http whole": lambda: http_round(http, work, model, False, share),
        "grpc stream": lambda: grpc_round(grpc_client, work, OutputMode.STREAM, share),
        "http stream": lambda: http_round(http, work, model, True, share),
    }


def client_process(conn: Connection, router: str, base_url: str, work: Workload, share: range) -> None:
    """--client-processes: one client of its own (both paths) that runs its share of a round's requests
    each time the parent names a path, and answers with the tokens generated (None: stop)."""

    async def serve() -> None:
        async with (
            AsyncGenerationClient(router, timeout=600) as grpc_client,
            openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600) as http,
        ):
            runs = path_rounds(grpc_client, http, work, (await http.models.list()).data[0].id, share)
            conn.send("ready")
            while (path := await asyncio.to_thread(conn.recv)) is not None:
                conn.send(await runs[path]())

    asyncio.run(serve())


class CpuMeter:
    """CPU seconds (user + system) used so far by named groups of processes, each with its live
    children (the router's HTTP front processes, the worker's TP ranks), so that a round shows which
    side of the connection is busy: the router, the worker, or the bench's own clients. A pid in
    `alone` counts without its children (this process, when it is the client: the cluster is its child)."""

    def __init__(self, groups: dict[str, list[int]], alone: tuple[int, ...] = ()) -> None:
        self.groups = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}
        self.alone = alone

    def read(self) -> dict[str, float]:
        return {name: sum(map(self._cpu, processes)) for name, processes in self.groups.items()}

    def _cpu(self, process: psutil.Process) -> float:
        members = [process] if process.pid in self.alone else [process, *process.children(recursive=True)]
        total = 0.0
        for member in members:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total


async def measure(
    cluster: LocalCluster, work: Workload, rounds: int, processes: int, paths: tuple[str, ...] = PATHS
) -> dict[str, list[float]]:
    """Output tokens per second of every timed round, by path. With processes > 1, the requests of a
    round are split over that many client processes (one Python client process is itself a limit
    past ~20k streamed tokens a second)."""
    info = cluster.routers[0].info
    base_url = f"http://{info['host']}:{info['http_port']}/v1"
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    for rank in range(processes if processes > 1 else 0):
        parent, child = context.Pipe()
        share = range(rank, work.num_requests, processes)
        args = (child, cluster.router_address, base_url, work, share)
        children.append(context.Process(target=client_process, args=args, daemon=True))
        children[-1].start()
        pipes.append(parent)
    try:
        for pipe in pipes:
            if not pipe.poll(120) or pipe.recv() != "ready":
                raise RuntimeError("a client process did not start within 120 s")

        async def spread(path: str) -> Finished:
            for pipe in pipes:
                pipe.send(path)
            return Finished.of([await asyncio.to_thread(pipe.recv) for pipe in pipes])

        meter = CpuMeter({
            "router": [router.pid for router in cluster.routers if router.pid],
            "worker": [worker.pid for worker in cluster.workers if worker.pid],
            "clients": [child.pid for child in children if child.pid] or [os.getpid()],
        }, alone=(os.getpid(),))  # fmt: skip
        if pipes:
            runs = {path: (lambda p=path: spread(p)) for path in paths}
            return await measure_rounds(runs, work, rounds, meter)
        async with (
            AsyncGenerationClient(cluster.router_address, timeout=600) as grpc_client,
            openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600) as http,
        ):
            model = (await http.models.list()).data[0].id
            runs = path_rounds(grpc_client, http, work, model, range(work.num_requests))
            return await measure_rounds({path: runs[path] for path in paths}, work, rounds, meter)
    finally:
        for pipe in pipes:
            pipe.send(None)
        for child in children:
            child.join(timeout=30)


async def measure_rounds(
    runs: dict[str, Callable[[], Awaitable[Finished]]], work: Workload, rounds: int, meter: CpuMeter
) -> dict[str, list[float]]:
    """Per path, each timed round's out tok/s; under "PATH cpu GROUP", the CPU µs per output token
    each process group used in that round; under "PATH first" and "PATH last", the seconds from the
    round's start to its first and its last completed request."""
    expected = work.num_tokens
    samples: dict[str, list[float]] = {path: [] for path in runs}
    for round_index in range(rounds + 1):  # round 0 warms up (connections, kernels, caches)
        for path in runs:
            before = meter.read()
            took = await timed(runs[path])
            used = {group: cpu - before[group] for group, cpu in meter.read().items()}
            num_tokens = took.num_tokens
            assert num_tokens == expected, f"{path}: {num_tokens} tokens, expected {expected}"
            if round_index:
                samples[path].append(num_tokens / took.seconds)
                samples.setdefault(f"{path} first", []).append(took.first_done)
                samples.setdefault(f"{path} last", []).append(took.last_done)
                for group, cpu in used.items():
                    samples.setdefault(f"{path} cpu {group}", []).append(1e6 * cpu / num_tokens)
                cpu_text = ", ".join(f"{group} {1e6 * cpu / num_tokens:.1f}" for group, cpu in used.items())
                print(f"  round {round_index} {path:12s} {num_tokens / took.seconds:9.1f} out tok/s; "
                      f"requests done at {took.first_done:.2f}-{took.last_done:.2f} s; "
                      f"CPU µs/token: {cpu_text}", flush=True)  # fmt: skip
    return samples


GRPC_PAIR = {"http whole": "grpc final", "http stream": "grpc stream"}  # the same output mode


def report(samples: dict[str, list[float]]) -> str:
    """Medians per path; HTTP / gRPC is the median of each round's own ratio (a round's paths run
    back to back, so a machine that slows down for a while slows both)."""
    cpu_heads = " | ".join(f"{group} CPU µs/tok" for group in CPU_GROUPS)
    lines = [
        f"| path | out tok/s (median) | min-max | HTTP / gRPC | requests done at (s) | {cpu_heads} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in (path for path in PATHS if path in samples):
        rates = samples[path]
        ratio = ""
        if path in GRPC_PAIR:
            pairs = zip(rates, samples[GRPC_PAIR[path]], strict=True)
            ratio = f"{statistics.median(http / grpc for http, grpc in pairs):.2f}"
        cpu = " | ".join(f"{statistics.median(samples[f'{path} cpu {group}']):.1f}" for group in CPU_GROUPS)
        spread = f"{min(rates):.1f}-{max(rates):.1f}"
        first, last = (statistics.median(samples[f"{path} {end}"]) for end in ("first", "last"))
        done = f"{first:.2f}-{last:.2f}"
        lines.append(f"| {path} | {statistics.median(rates):.1f} | {spread} | {ratio} | {done} | {cpu} |")
    return "\n".join(lines)


class InstantBackend:
    """--front-only's backend: a worker that costs nothing. Every sample is `new_tokens` ids of real
    text (so detokenizing costs what it does), with a processed logprob each. STREAM: a chunk per
    sample per step, a step's chunks back to back as a worker's step arrives; FINAL: one message
    per sample."""

    version = 1
    is_serving = True
    limits = ModelLimits(vocab_size=2**17, max_model_len=2**16, max_n=16)

    def __init__(self, output_ids: list[int]) -> None:
        self.output_ids = output_ids

    async def generate(self, request: common_pb2.GenerateRequest, deadline: object, write: Send) -> None:
        start = request.sampling.seed if request.sampling.HasField("seed") else 0
        budget = request.sampling.max_tokens
        ids = [self.output_ids[(start + i) % len(self.output_ids)] for i in range(budget)]
        n = request.n if request.HasField("n") else 1
        if request.output_mode == common_pb2.OUTPUT_MODE_FINAL:
            for sample in range(n):
                await write(self._finish(request, sample, ids))
            return
        for token_id in ids:
            for sample in range(n):
                message = self._message(request, sample)
                message.chunk.token_ids.append(token_id)
                message.chunk.logprobs.append(-0.5)
                await write(message)
            await asyncio.sleep(0)  # the next engine step
        for sample in range(n):
            await write(self._finish(request, sample, []))

    def _message(self, request: common_pb2.GenerateRequest, sample: int) -> common_pb2.GenerateResponse:
        return common_pb2.GenerateResponse(
            request_id=request.request_id, sample_index=sample, policy_version=self.version
        )

    def _finish(
        self, request: common_pb2.GenerateRequest, sample: int, ids: list[int]
    ) -> common_pb2.GenerateResponse:
        message = self._message(request, sample)
        message.finish.output.token_ids.extend(ids)
        message.finish.output.logprobs.extend([-0.5] * len(ids))
        message.finish.finish_reason = common_pb2.FINISH_REASON_LENGTH
        message.finish.num_generated_tokens = request.sampling.max_tokens
        return message

    async def abort(self, request_id: str) -> bool:
        return False

    async def refresh(self) -> None:
        pass


def serve_front(model_dir: Path, output_ids: list[int], conn: Connection, profile: Path | None) -> None:
    """--front-only's server process: the HTTP front on InstantBackend until `conn` says stop."""
    from epochserve.router.httpfront.app import build_app
    from epochserve.router.httpfront.codec import TextCodec
    from epochserve.router.httpfront.front import Front
    from epochserve.router.httpfront.server import HttpServer

    profiler = cProfile.Profile()

    async def serve() -> None:
        app = build_app(Front(InstantBackend(output_ids), TextCodec.load(model_dir), "bench"))
        server = HttpServer(app, "127.0.0.1", 0)
        conn.send(await server.start())
        profiler.enable()  # this thread only: the event loop's work
        await asyncio.to_thread(conn.recv)
        profiler.disable()
        await server.stop()

    asyncio.run(serve())
    if profile is not None:
        profiler.dump_stats(profile)


async def front_only(
    model_dir: Path, work: Workload, rounds: int, profile: Path | None
) -> dict[str, list[float]]:
    """Per path, each timed round's out tok/s and the server process's CPU µs per output token."""
    output_ids = [t for ids in work.prompt_ids for t in ids[1:]]
    parent, child = multiprocessing.get_context("spawn").Pipe()
    server = multiprocessing.get_context("spawn").Process(
        target=serve_front, args=(model_dir, output_ids, child, profile)
    )
    server.start()
    try:
        port = await asyncio.wait_for(asyncio.to_thread(parent.recv), 120)
        meter = CpuMeter({"router": [server.pid]}, alone=(server.pid,))
        samples: dict[str, list[float]] = {}
        async with openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=600
        ) as http:
            for round_index in range(rounds + 1):  # round 0 warms up
                for path, stream in (("http whole", False), ("http stream", True)):
                    before = meter.read()["router"]
                    took = await timed(
                        lambda: http_round(http, work, "bench", stream, range(work.num_requests))  # noqa: B023
                    )
                    used = meter.read()["router"] - before
                    num_tokens, seconds = took.num_tokens, took.seconds
                    if round_index:
                        samples.setdefault(path, []).append(num_tokens / seconds)
                        samples.setdefault(f"{path} µs", []).append(1e6 * used / num_tokens)
                        print(f"  round {round_index} {path:12s} {num_tokens / seconds:9.1f} out tok/s, "
                              f"{1e6 * used / num_tokens:.1f} router CPU µs/token", flush=True)  # fmt: skip
    finally:
        parent.send("stop")
        server.join(60)
    return samples


def front_report(samples: dict[str, list[float]]) -> str:
    lines = ["| path | out tok/s (median) | router CPU µs / out token (median) |", "|---|---|---|"]
    for path in ("http whole", "http stream"):
        rate, cost = statistics.median(samples[path]), statistics.median(samples[f"{path} µs"])
        lines.append(f"| {path} | {rate:.1f} | {cost:.1f} |")
    return "\n".join(lines)


def random_model(source: Path, out_dir: Path, tiny: bool) -> Path:
    """A seeded random model with `source`'s tokenizer and vocabulary, from its config.json alone (a
    machine without the checkpoint): its own shape, or with `tiny` a 2-layer 64-wide Llama whose
    engine steps cost little, so that the router's work is most of what is measured."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    config = AutoConfig.from_pretrained(source)
    if tiny:
        config = LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            eos_token_id=config.eos_token_id, bos_token_id=config.bos_token_id,
        )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(source).save_pretrained(out_dir)
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: bundled SmolLM2)")
    parser.add_argument(
        "--weights",
        choices=("real", "random", "tiny"),
        default="real",
        help="--model's own; random ones of its shape; a tiny random model (both: its tokenizer)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the one worker")
    parser.add_argument("--requests", type=int, default=32, help="requests per round, sent at once")
    parser.add_argument("--n", type=int, default=2, help="samples per request")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens per sample (ignore_eos)")
    parser.add_argument(
        "--min-new-tokens", type=int, default=0,
        help="> 0: each request's tokens a sample drawn from [this, --new-tokens] (RL lengths vary)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per path, after one warm-up")
    parser.add_argument(
        "--worker-arg", action="append", default=[], help="an extra `epochctl worker` flag (repeatable)"
    )
    parser.add_argument(
        "--router-arg", action="append", default=[], help="an extra `epochctl router` flag (repeatable)"
    )
    parser.add_argument(
        "--client-processes", type=int, default=1, help="split each round's requests over this many clients"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--modes", default="final,stream", help="output modes to time: final (gRPC FINAL, HTTP whole), stream"
    )
    parser.add_argument("--front-only", action="store_true", help="the HTTP front alone (module doc)")
    parser.add_argument("--profile", type=Path, default=None, help="--front-only: cProfile stats here")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = [mode for mode in args.modes.split(",") if mode]
    if not modes or set(modes) - set(MODE_PATHS):
        parser.error(f"--modes: choose from {', '.join(MODE_PATHS)}, got {args.modes!r}")
    paths = tuple(path for mode in modes for path in MODE_PATHS[mode])
    from transformers import AutoTokenizer

    from epochserve.worker.models.bundled import prepare_smollm2

    model_dir = args.model or prepare_smollm2(progress=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [list(tokenizer.encode(p)) for p in PROMPTS]
    work = Workload(args.requests, args.n, args.new_tokens, args.temperature, prompt_ids, args.min_new_tokens)
    if args.front_only:
        print(front_report(asyncio.run(front_only(model_dir, work, args.rounds, args.profile))))
        return
    worker_args = tuple(arg for flag in args.worker_arg for arg in flag.split("=", 1))
    router_args = tuple(arg for flag in args.router_arg for arg in flag.split("=", 1))
    with tempfile.TemporaryDirectory() as tmp:
        if args.weights != "real":
            model_dir = random_model(model_dir, Path(tmp) / "model", tiny=args.weights == "tiny")
        spec = LocalClusterSpec(
            model_dir=model_dir, workdir=Path(tmp) / "cluster", tp=args.tp, device=args.device,
            worker_args=worker_args, router_args=router_args, num_routers=1, http_front=True, fast_etcd=True,
        )  # fmt: skip
        with LocalCluster(spec) as cluster:
            samples = asyncio.run(measure(cluster, work, args.rounds, args.client_processes, paths))
    print(report(samples))
    setup = {key: value for key, value in vars(args).items() if key != "json"}
    summary = {"machine": platform.processor() or platform.machine(), "setup": setup, "rounds": samples}
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
