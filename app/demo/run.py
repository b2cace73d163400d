"""`epochctl demo`: a local cluster, the RL loop under extra load with a rollout in each drain policy,
a worker killed and restarted mid-run, `verify` over the router's audit log, and a summary."""

from __future__ import annotations

import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from epochserve.app.demo.background_load import BackgroundLoad, LoadSummary
from epochserve.app.demo.rl_loop import LoopConfig, StepReport, format_step, run_rl_loop
from epochserve.app.local.cluster import LocalCluster, LocalClusterSpec
from epochserve.app.verify.check import VerifyReport, verify

MAX_ABS_DELTA = 1e-4  # the RL loop runs fp32 on CPU: the engine must agree with the trainer this closely


@dataclass
class DemoResult:
    steps: list[StepReport]
    load: LoadSummary
    verified: VerifyReport

    @property
    def ok(self) -> bool:
        return (
            self.load.lost == 0
            and self.load.mixed_versions == 0
            and not self.verified.mixed_version_responses
            and all(len(set(s.group_versions)) == 1 for s in self.steps)
            and all(
                s.mismatch.max_abs_delta <= MAX_ABS_DELTA and s.mismatch.token_clip_rate == 0
                for s in self.steps
            )
            and self.verified.overall.max_abs_delta <= MAX_ABS_DELTA
        )


def run_demo(
    model_dir: Path, workdir: Path, steps: int = 3, kill_worker: bool = True, say=print
) -> DemoResult:
    audit = workdir / "audit.jsonl"
    spec = LocalClusterSpec(
        model_dir=model_dir, workdir=workdir, num_workers=2, num_routers=1,
        worker_args=("--lease-ttl", "3"), router_args=("--audit-log", str(audit)),
    )  # fmt: skip
    say(f"starting etcd, a coordinator, 2 workers and a router (logs in {workdir}) ...")
    with LocalCluster(spec) as cluster:
        load = BackgroundLoad(cluster.router_address)
        load.start()

        def after_step(report: StepReport) -> None:
            say(format_step(report))
            if kill_worker and report.step == 0:
                say("killing worker-1 (SIGKILL) under load, then restarting it ...")
                cluster.workers[1].signal(signal.SIGKILL)
                cluster.restart_worker(1)
                say("worker-1 is back (it loaded the committed version before turning ready)")

        config = LoopConfig(steps=steps)
        reports = run_rl_loop(cluster.router_address, cluster.admin_address, cluster.token, model_dir,
                              workdir / "trainer", config, after_step)  # fmt: skip
        summary = load.stop()
        say(f"verifying {audit.name} against transformers ...")
        dirs = {
            0: model_dir,
            **{r.published_version: workdir / "trainer" / f"v{r.published_version}" for r in reports},
        }
        cluster.routers[0].stop()  # flush the audit log
    from epochserve.app.verify.audit import read_audit_log
    from epochserve.app.verify.recompute import Recomputer

    report = verify(list(read_audit_log(audit)), Recomputer(dirs))
    return DemoResult(reports, summary, report)


def print_summary(result: DemoResult, out=sys.stdout) -> None:
    def line(text: str = "") -> None:
        print(text, file=out)

    line("\n== RL loop: the trainer's recompute against the engine's logprobs, before each optimizer step")
    line(
        f"{'step':>4} {'version':>7} {'reward':>6} {'mean|Δ|':>9} {'max|Δ|':>9} {'KL':>9} {'clip':>6} "
        f"{'publish':>8} drain"
    )
    for s in result.steps:
        m = s.mismatch
        numbers = (
            f"{m.mean_abs_delta:9.1e} {m.max_abs_delta:9.1e} {m.kl_new_old:9.1e} {m.token_clip_rate:6.1%}"
        )
        head = f"{s.step:4d} {s.sampled_version:7d} {s.reward_mean:6.2f}"
        line(f"{head} {numbers} {s.publish_seconds:7.1f}s {s.drain}")
    load = result.load
    line(f"\n== extra load: {load.sent} sent, {load.completed} completed, errors {dict(load.errors)}, "
         f"lost {load.lost}, mixed versions {load.mixed_versions}")  # fmt: skip
    rate = load.output_tokens / max(load.seconds, 1e-9)
    percentiles = " ".join(f"p{q} {load.percentile(q):.2f} s" for q in (50, 90, 99))
    line(
        f"   per version {dict(sorted(load.per_version.items()))}; {rate:.1f} output tok/s; "
        f"latency {percentiles}"
    )
    v = result.verified.overall
    line(f"\n== verify (router audit log): {v.num_sequences} samples, mean|Δ| {v.mean_abs_delta:.1e}, "
         f"max|Δ| {v.max_abs_delta:.1e}, clip {v.token_clip_rate:.1%}")  # fmt: skip
    verdict = "PASS: one version per response and group, no request lost, logprobs match the trainer"
    line(f"\n{verdict}" if result.ok else "\nFAIL")
