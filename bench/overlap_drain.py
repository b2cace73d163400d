"""Drain policies under RL load: the same closed-loop load run once without rollouts, then with a
rollout every --rollout-every seconds under drain=finish, drain=abort and drain=overlap.

One worker behind one router (LocalCluster: etcd, coordinator, worker, router on this machine);
the load tester's engine in this process sends n-sample groups with long outputs (STREAM, so that
tokens are timed as they arrive); its soak driver rolls out new versions through the Admin API,
alternating two weight sources (random weights A and B). A run sends for --duration seconds, then
until the rollout under way is DONE, then --tail seconds more; requests still open then are
cancelled (after the measured window, so they do not count). Between runs the worker empties.

Per policy: output tok/s (goodput) relative to the run without rollouts; per rollout the worker's
drain report (commit → last v-1 sequence ended, commit → first new-version token, v-1 sequences
finished / aborted), commit → DONE as seen here, the GPU idle estimate (idle and lost seconds,
bench/overlap_drain_metrics.py says how they are computed) and the output thrown away.

The worker's "first v token" counts from the commit; under a closed loop alone it would include
waiting for a client to be free to send a v request (all are busy at the commit). So as soon as a
rollout starts, a one-token request with min_policy_version = its version waits at the router
("held probe"): at the commit a v request exists, and the worker's first v token measures the
worker. What a request sent after the commit waits is measured apart: as soon as the commit is
seen (the drain report appears; polled every 0.25 s) a probe request (one token) is sent, and its
time to first token is reported ("probe ms").

    python bench/overlap_drain.py --tiny                    # CPU smoke: tiny model, short outputs
    python bench/overlap_drain.py --device cuda             # random Llama-3.2-1B shape, 2k-8k tokens
        [--duration 60] [--baseline-duration 40] [--rollout-every 25] [--concurrency 16] [--n 4]
        [--input uniform:128,256] [--output uniform:2048,8192] [--drain-deadline S] [--json OUT]
        [--baseline-again] [--warm-run S] [--worker-arg=--FLAG=VALUE] [--output-mode stream|final]
Prints a line per rollout, then a table. Not pass/fail: numbers go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import grpc
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import overlap_drain_metrics as metrics  # noqa: E402
from soak import LLAMA_1B, TINY, machine, random_llama  # noqa: E402

from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec  # noqa: E402
from epochserve.client.errors import GenerationError  # noqa: E402
from epochserve.client.generation import AsyncGenerationClient  # noqa: E402
from epochserve.controlplane.admin.client import AdminClient  # noqa: E402
from epochserve.loadtest.config import DrainName, LoadPlan, SoakConfig  # noqa: E402
from epochserve.loadtest.driver import LoadDriver, RunState  # noqa: E402
from epochserve.loadtest.purity import check_run  # noqa: E402
from epochserve.loadtest.records import ObservedRollout, VersionLog  # noqa: E402
from epochserve.loadtest.soak import RolloutCycler  # noqa: E402
from epochserve.loadtest.versions import VersionPublisher  # noqa: E402
from epochserve.loadtest.workload import LengthDistribution, SyntheticWorkload  # noqa: E402
from epochserve.proto.convert import OutputMode  # noqa: E402
from epochserve.proto.v1 import admin_pb2, worker_pb2, worker_pb2_grpc  # noqa: E402
from epochserve.sampling import SamplingParams  # noqa: E402

POLICIES: tuple[DrainName, ...] = ("finish", "abort", "overlap")
# The 1B shape with room for 256-token prompts + 8,192-token outputs (random weights: RoPE only).
LLAMA_1B_LONG = dict(LLAMA_1B, max_position_embeddings=10240)
DRAIN_POLL_SECONDS = 0.25
TIMELINE_SECONDS = 1.0  # the worker's batch and KV pool, polled
PROBE_PROMPT = list(range(11, 139))  # 128 ids
PROBE_TIMEOUT_SECONDS = 300.0
# Leases longer than the soak's 2 s: a busy host that misses a keepalive would fence the worker
# mid-run, and its dropped requests would be counted against the drain policy under test.
LEASE_TTL_SECONDS = "10"
IDLE_TIMEOUT_SECONDS = 120.0  # between runs: the worker frees the cancelled requests' sequences


async def run_once(
    cluster: LocalCluster, args: argparse.Namespace, drain: DrainName | None, sources: tuple[Path, ...],
    publisher: VersionPublisher,
) -> tuple[RunState, list[ObservedRollout], VersionLog, float, list[dict[str, Any]]]:  # fmt: skip
    """One run: (its records, its rollouts, its version log, when sending stopped, the worker's
    state every TIMELINE_SECONDS)."""
    duration = args.duration if drain else args.baseline_duration
    cap = duration + args.max_extra_seconds  # a drain that never ends must not hang the bench
    state, versions = RunState(time.monotonic()), VersionLog()
    plan = LoadPlan(  # drain timeout 0: what is open when sending stops is cancelled at once
        concurrency=args.concurrency, duration_seconds=cap, request_timeout_seconds=cap + 60,
        drain_timeout_seconds=0.0, temperature=1.0, ignore_eos=True,
        output_mode=OutputMode[args.output_mode.upper()],
    )  # fmt: skip
    workload = SyntheticWorkload(
        LengthDistribution.parse(args.input), LengthDistribution.parse(args.output),
        vocab_size=args.vocab_size, n=args.n, seed=0,
    )  # fmt: skip
    reports: dict[int, dict[str, Any]] = {}  # version → the worker's drain report
    no_more_rollouts, no_more_reports = asyncio.Event(), asyncio.Event()
    timeline: list[dict[str, Any]] = []
    held: dict[int, dict[str, Any]] = {}  # version → its held probe's numbers
    async with AsyncGenerationClient(cluster.router_address) as client:
        await client.get_policy(timeout=60, wait_for_ready=True)
        driver = LoadDriver(client, workload, plan, state)
        load = asyncio.ensure_future(driver.run())
        polling = asyncio.ensure_future(poll_drain_reports(cluster, reports, no_more_reports, client))
        watching = asyncio.ensure_future(
            poll_worker(cluster.workers[0].address, state.origin, timeline, no_more_reports)
        )
        cycler = None
        if drain is not None:
            soak = SoakConfig(
                cluster.admin_address, cluster.token, sources, args.rollout_every, publisher.publish_dir,
                drains=(drain,), rollout_timeout_seconds=cap, drain_deadline_seconds=args.drain_deadline,
            )  # fmt: skip
            cycler = RolloutCycler(soak, versions)
            cycler.publisher = publisher  # the sources were hashed once, before any run
            rolling = asyncio.ensure_future(cycler.run(no_more_rollouts))
            holding = asyncio.ensure_future(send_held_probes(cycler, client, held, no_more_reports))
        await asyncio.wait({load}, timeout=duration)
        no_more_rollouts.set()
        if cycler is not None:  # the rollout under way is followed to its end, then a little
            await asyncio.wait({rolling}, timeout=max(0.0, state.origin + cap - time.monotonic()))
            await asyncio.sleep(args.tail)  # the new version's first token, the refill
        stopped_at = time.monotonic()
        driver.stop()
        await load
        no_more_reports.set()
        await asyncio.gather(polling, watching, *([holding] if cycler is not None else []))
    rollouts = cycler.rollouts if cycler else []
    for rollout in rollouts:  # the status seen at DONE may predate the first new-version token
        (watched,) = rollout.worker_drains.values() or [{}]  # the bench runs one worker
        polled = {k: v for k, v in reports.get(rollout.version, {}).items() if v is not None}
        polled |= held.get(rollout.version, {})
        rollout.worker_drains = {"worker-0": watched | polled}
    return state, rollouts, versions, stopped_at, timeline


async def poll_worker(address: str, origin: float, into: list[dict[str, Any]], stop: asyncio.Event) -> None:
    """The worker's batch and KV pool every TIMELINE_SECONDS until `stop`: where throughput dips,
    whether the batch emptied, requests waited or the pool ran out (sequences preempted)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        while not stop.is_set():
            with contextlib.suppress(grpc.aio.AioRpcError):  # a slow answer: the next poll
                info = await stub.GetWorkerInfo(worker_pb2.GetWorkerInfoRequest(), timeout=5)
                into.append({
                    "t": round(time.monotonic() - origin, 2), "version": info.policy_version,
                    "running": info.num_running_seqs, "waiting": info.num_waiting_seqs,
                    "free_blocks": info.kv_cache.num_blocks_free, "blocks": info.kv_cache.num_blocks_total,
                    "preemptions": info.num_preemptions,
                })  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TIMELINE_SECONDS)


async def poll_drain_reports(
    cluster: LocalCluster, reports: dict[int, dict[str, Any]], stop: asyncio.Event,
    client: AsyncGenerationClient,
) -> None:  # fmt: skip
    """Keep the worker's latest drain report per version (ListWorkers, every DRAIN_POLL_SECONDS).
    After a finish or abort drain the first new-version token comes after DONE, when the soak
    driver stopped watching; the worker sends its report again then, and it stays until the next
    commit, so polling sees its final form. A version's first report (its commit) sends a probe."""
    probes: dict[int, dict[str, Any]] = {}
    tasks: list[asyncio.Future] = []
    async with AdminClient(cluster.admin_address, cluster.token) as admin:
        while True:
            stopping = stop.is_set()  # one last poll after `stop`: the report at the last DONE
            with contextlib.suppress(grpc.aio.AioRpcError):  # a slow answer: the next poll
                for worker in (await admin.list_workers(timeout=5)).workers:
                    if worker.HasField("last_drain"):
                        version = worker.last_drain.version
                        if version not in probes and not stopping:
                            probes[version] = {}
                            probing = one_token_probe(client, probes[version], "probe")
                            tasks.append(asyncio.ensure_future(probing))
                        reports[version] = drain_fields(worker.last_drain) | probes[version]
            if stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DRAIN_POLL_SECONDS)
    if tasks:
        await asyncio.wait(tasks, timeout=PROBE_TIMEOUT_SECONDS)
    for version, probe in probes.items():  # probes that ended after the last poll
        reports[version] = reports.get(version, {}) | probe


async def send_held_probes(
    cycler: RolloutCycler, client: AsyncGenerationClient, into: dict[int, dict[str, Any]], stop: asyncio.Event
) -> None:  # fmt: skip
    """For each rollout, as soon as it starts, a one-token request with min_policy_version = its
    version: the router holds it until the commit, so a v request exists at the commit and the
    worker's first v token measures the worker, not when a client happened to send one."""
    tasks: list[asyncio.Future] = []
    while True:
        stopping = stop.is_set()
        for rollout in cycler.rollouts[len(tasks) :]:
            held = into[rollout.version] = {}
            probing = one_token_probe(client, held, "held", min_policy_version=rollout.version)
            tasks.append(asyncio.ensure_future(probing))
        if stopping:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), DRAIN_POLL_SECONDS / 2)
    if tasks:
        await asyncio.wait(tasks, timeout=PROBE_TIMEOUT_SECONDS)


async def one_token_probe(
    client: AsyncGenerationClient, into: dict[str, Any], key: str, min_policy_version: int | None = None
) -> None:  # fmt: skip
    """A one-token request: into `key`_ttft_s, _first_token_at (monotonic), _version, or _error."""
    sampling = SamplingParams(temperature=1.0, max_tokens=1)
    sent = time.monotonic()
    try:
        result = await client.generate(
            PROBE_PROMPT, sampling, min_policy_version=min_policy_version, timeout=PROBE_TIMEOUT_SECONDS
        )
    except GenerationError as exc:
        into[f"{key}_error"] = str(exc)[:200]
        return
    into[f"{key}_ttft_s"], into[f"{key}_version"] = result.ttft_seconds, result.policy_version
    into[f"{key}_first_token_at"] = sent + result.ttft_seconds


def drain_fields(d: admin_pb2.DrainReport) -> dict[str, Any]:
    return {
        "drain": admin_pb2.DrainPolicy.Name(d.drain).removeprefix("DRAIN_POLICY_").lower(),
        "first_token_seconds": d.first_token_seconds if d.HasField("first_token_seconds") else None,
        "retire_seconds": d.retire_seconds if d.HasField("retire_seconds") else None,
        "finished_previous": d.finished_previous,
        "aborted_previous": d.aborted_previous,
        "reason": d.reason,
    }


def summarize(
    label: str, state: RunState, rollouts: list[ObservedRollout], versions: VersionLog, stopped_at: float,
    steady: float | None, warmup: float, timeline: list[dict[str, Any]], baseline_end: float | None,
) -> dict[str, Any]:  # fmt: skip
    """The run's numbers (overlap_drain_metrics.py defines them); `steady` None: this is the baseline,
    which ran `baseline_end` seconds (None: this run's own length)."""
    records = state.records
    series = metrics.Series.of(state.token_ticks, state.origin)
    start = state.origin + warmup
    rate = metrics.goodput(series, records, start, stopped_at)
    ended = [r for r in records if r.outcome != "unfinished"]  # the rest were cancelled at the end
    purity = check_run(ended, versions)
    steady = steady or rate
    # The same seconds of both runs: sequences age (their KV grows) as a run goes on, so a run
    # longer than the baseline is slower by that alone.
    same_end = stopped_at if baseline_end is None else min(stopped_at, state.origin + baseline_end)
    same_rate = metrics.goodput(series, records, start, same_end)
    return {
        "policy": label,
        "window_s": stopped_at - start,
        "goodput_tok_s": rate,
        "streamed_tok_s": series.tokens_in(start, stopped_at) / (stopped_at - start),
        "relative": rate / steady,
        "same_window_s": [warmup, same_end - state.origin],
        "same_window_tok_s": same_rate,
        "requests": {
            "sent": len(records),
            "completed": sum(r.outcome == "completed" for r in records),
            "errors": sum(r.outcome == "error" for r in records),
            "cancelled_at_end": len(records) - len(ended),
        },
        "ttft_p99_s": metrics.ttft_p99(records),
        "violations": len(purity.violations),
        "rollouts": [metrics.rollout_row(r, series, records, steady, state.origin) for r in rollouts],
        "series_tok_s": [round(c / series.width) for c in series.tokens],
        "worker_timeline": timeline,
    }


def wait_idle(address: str, timeout: float = IDLE_TIMEOUT_SECONDS) -> None:
    """Until the worker runs and queues nothing (the previous run's cancelled requests freed)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        while True:
            info = stub.GetWorkerInfo(worker_pb2.GetWorkerInfoRequest(), timeout=10)
            if info.num_running_seqs + info.num_waiting_seqs == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker still runs {info.num_running_seqs} sequences")
            time.sleep(0.2)


def worker_args(args: argparse.Namespace) -> tuple[str, ...]:
    common = ("--lease-ttl", LEASE_TTL_SECONDS, "--max-num-seqs", str(args.max_num_seqs), *args.worker_arg)
    # CPU: small blocks keep the tiny model's pool fine-grained; CUDA: room for the staged twins.
    return common + (
        ("--block-size", "16") if args.device == "cpu" else ("--kv-cache-memory-fraction", "0.8")
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke: tiny model, short outputs, short runs")
    p.add_argument("--device", default="cuda", help="cuda (random Llama-3.2-1B shape) or cpu")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per rollout run")
    p.add_argument("--baseline-duration", type=float, default=40.0, help="seconds, the run without")
    p.add_argument("--rollout-every", type=float, default=25.0, help="seconds between rollout starts")
    p.add_argument("--max-extra-seconds", type=float, default=150.0, help="cap on a drain past --duration")
    p.add_argument("--tail", type=float, default=3.0, help="seconds of load after the last DONE")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds left out of the measured window")
    p.add_argument("--concurrency", type=int, default=16, help="groups in flight (closed loop)")
    p.add_argument("--n", type=int, default=4, help="samples per group")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--input", default="uniform:128,256", help="prompt length distribution")
    p.add_argument("--output", default="uniform:2048,8192", help="max_tokens distribution")
    p.add_argument("--drain-deadline", type=float, default=None, help="seconds, every rollout's")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, run in this order")
    p.add_argument(
        "--output-mode", choices=("stream", "final"), default="stream",
        help="final: each sample in one message (no serving-path cost per token; its tokens count when "
        "the sample ends, so a window shorter than many samples undercounts)",
    )  # fmt: skip
    p.add_argument(
        "--baseline-again", action="store_true",
        help="run without rollouts once more at the end: what the runs' order alone changes",
    )  # fmt: skip
    p.add_argument(
        "--warm-run", type=float, default=0.0,
        help="seconds of the same load without rollouts, unmeasured, before the first run: the "
        "first run on a fresh cluster has come out 7-14%% slower than a later one (docs/benchmarks.md)",
    )  # fmt: skip
    p.add_argument(
        "--worker-arg", action="append", default=[],
        help="one more `epochctl worker` flag, e.g. --worker-arg=--graph-bucket-step=16 (repeatable)",
    )  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the results here (after every run)")
    return p


def apply_tiny(args: argparse.Namespace) -> None:
    """The CPU smoke: the whole bench in about two minutes on two cores."""
    args.device, args.duration, args.baseline_duration, args.rollout_every = "cpu", 14.0, 10.0, 6.0
    args.max_extra_seconds, args.warmup, args.tail, args.concurrency, args.n = 30.0, 2.0, 1.0, 4, 2
    args.max_num_seqs, args.input, args.output = 16, "uniform:8,32", "uniform:48,160"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.policies = [p for p in args.policies.split(",") if p]
    if unknown := set(args.policies) - set(POLICIES):
        parser.error(f"--policies: unknown {sorted(unknown)}; choose from {', '.join(POLICIES)}")
    if args.tiny:
        apply_tiny(args)
    shape, dtype = (TINY, torch.float32) if args.tiny else (LLAMA_1B_LONG, torch.bfloat16)
    args.vocab_size = shape["vocab_size"]
    root = Path(tempfile.mkdtemp(prefix="epochserve-overlap-"))
    a = random_llama(root / "A", shape, seed=0, dtype=dtype, device=args.device)
    b = random_llama(root / "B", shape, seed=1, dtype=dtype, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()  # the worker process needs the GPU, not this one
    spec = LocalClusterSpec(
        model_dir=a, workdir=root / "cluster", num_workers=1, device=args.device,
        worker_args=worker_args(args), one_gpu_per_worker=args.device != "cpu",
        num_routers=1, router_args=("--lease-ttl", LEASE_TTL_SECONDS),
    )  # fmt: skip
    results: dict[str, Any] = {"machine": machine(args.device), "date": time.strftime("%Y-%m-%d")}
    results["config"] = {k: v for k, v in vars(args).items() if k != "json"} | {"json": str(args.json)}
    results["runs"] = []
    publisher = VersionPublisher(root / "versions")
    publisher.warm_up((a, b))
    num_rollouts = 0
    with LocalCluster(spec) as cluster:
        if args.warm_run > 0:
            print(f"warm-up: {args.warm_run:.0f} s without rollouts, not measured", flush=True)
            warm = argparse.Namespace(**{**vars(args), "baseline_duration": args.warm_run})
            asyncio.run(run_once(cluster, warm, None, (a, b), publisher))
            wait_idle(cluster.workers[0].address)
        steady = baseline_end = None
        for label in ("none", *args.policies, *(("none",) if args.baseline_again else ())):
            drain = None if label == "none" else cast(DrainName, label)
            sources = (b, a) if num_rollouts % 2 == 0 else (a, b)  # alternate across runs too
            print(f"run {label}: {'no rollouts' if drain is None else f'drain={drain}'}", flush=True)
            outcome = asyncio.run(run_once(cluster, args, drain, sources, publisher))
            state, rollouts, versions, stopped, timeline = outcome
            num_rollouts += len(rollouts)
            run = summarize(
                label, state, rollouts, versions, stopped, steady, args.warmup, timeline, baseline_end
            )
            if steady is None:
                steady, baseline_end = run["goodput_tok_s"], stopped - state.origin
            run["same_window_relative"] = run["same_window_tok_s"] / steady
            results["runs"].append(run)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
            wait_idle(cluster.workers[0].address)
    against_baselines(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"\nmachine: {results['machine']}\nlogs: {root}")
    print_rollouts(results["runs"])
    print_timelines(results["runs"])
    print_table(results["runs"], args)
    print("'same s': tok/s over the baseline's seconds of each run, relative to the baseline")
    if "baselines" in results:
        b = results["baselines"]
        print(
            f"baselines over the same seconds: {', '.join(f'{t:.0f}' for t in b['tok_s'])} tok/s "
            f"(the runs' order alone moved them {b['spread']:.1%}); each run against their mean: "
            + ", ".join(f"{run['policy']} {run['vs_baselines_mean']:.1%}" for run in results["runs"])
        )


def against_baselines(results: dict[str, Any]) -> None:
    """With --baseline-again: every run over the same seconds against the mean of the runs without
    rollouts (one before, one after), whose spread is how much the order of runs alone moves."""
    runs = results["runs"]
    baselines = [run["same_window_tok_s"] for run in runs if run["policy"] == "none"]
    if len(baselines) < 2:
        return
    mean = statistics.mean(baselines)
    results["baselines"] = {"tok_s": baselines, "spread": (max(baselines) - min(baselines)) / mean}
    for run in runs:
        run["vs_baselines_mean"] = run["same_window_tok_s"] / mean


def print_rollouts(runs: list[dict[str, Any]]) -> None:
    print("\nper rollout (times from the commit; idle/lost: GPU idle estimates over commit → DONE)")
    for run in runs:
        for r in run["rollouts"]:
            print(
                f"  {run['policy']:>7} v{r['version']} {r['outcome']}: commit at {_f(r['commit_at'])} s, "
                f"DONE +{_f(r['commit_to_done_s'])} s, v-1 retired +{_f(r['retire_s'])} s, first v token "
                f"+{_f(r['first_new_token_s'], 3)} s, probe ttft {_f(r.get('probe_ttft_s'), 3)} s "
                f"(v{r.get('probe_version')}), held probe's token +{_f(r.get('held_first_token_s'), 3)} s "
                f"(v{r.get('held_version')}), v-1 finished {r['finished_previous']} aborted "
                f"{r['aborted_previous']}, idle {_f(r.get('idle_s'))} s, lost {_f(r.get('lost_s'))} s, "
                f"wasted {r.get('wasted_tokens', '-')} tok {r['reason']}".rstrip()
            )


def print_timelines(runs: list[dict[str, Any]], every: float = 10.0) -> None:
    print(
        f"\nevery {every:g} s: streamed tok/s over the last {every:g} s | "
        "running, waiting, free KV blocks, preemptions"
    )
    for run in runs:
        series, width = run["series_tok_s"], metrics.BUCKET_SECONDS
        per = round(every / width)
        cells = []
        for point in run["worker_timeline"][:: round(every / TIMELINE_SECONDS)]:
            end = min(len(series), round(point["t"] / width))
            rate = statistics.mean(series[max(0, end - per) : end]) if end > 0 else 0.0
            cells.append(
                f"{point['t']:.0f}s {rate / 1e3:.1f}k v{point['version']} "
                f"{point['running']}/{point['waiting']}/{point['free_blocks']}/{point['preemptions']}"
            )
        print(f"  {run['policy']:>7}: " + " | ".join(cells))


def print_table(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    load = f"{args.concurrency} groups x n {args.n}, prompts {args.input}, outputs {args.output}"
    print(f"\n{load}; a rollout every {args.rollout_every:g} s; medians over a run's rollouts")
    print(
        f"{'policy':>8} {'tok/s':>8} {'vs none':>8} {'same s':>7} {'rollouts':>8} {'retire s':>9} "
        f"{'1st v ms':>9} {'held ms':>8} {'probe ms':>9} "
        f"{'idle s':>7} {'lost s':>7} {'v-1 fin/abrt':>12} {'wasted':>8} {'ttft p99':>9} "
        f"{'err':>4} {'viol':>5}"
    )
    for run in runs:
        rows = run["rollouts"]

        def median_of(key: str, scale: float = 1.0, rows: list[dict[str, Any]] = rows) -> float | None:
            value = _median([r.get(key) for r in rows])
            return None if value is None else value * scale

        fin = sum(r["finished_previous"] or 0 for r in rows)
        abrt = sum(r["aborted_previous"] or 0 for r in rows)
        wasted = sum(r.get("wasted_tokens", 0) for r in rows)
        print(
            f"{run['policy']:>8} {run['goodput_tok_s']:8.0f} {run['relative']:8.1%} "
            f"{run['same_window_relative']:7.1%} {len(rows):8d} "
            f"{_f(median_of('retire_s')):>9} {_f(median_of('first_new_token_s', 1e3), 0):>9} "
            f"{_f(median_of('held_first_token_s', 1e3), 0):>8} {_f(median_of('probe_ttft_s', 1e3), 0):>9} "
            f"{_f(median_of('idle_s')):>7} {_f(median_of('lost_s')):>7} {f'{fin}/{abrt}':>12} "
            f"{wasted:8d} {_f(run['ttft_p99_s'], 2):>9} {run['requests']['errors']:4d} {run['violations']:5d}"
        )


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
