"""A small, real RL loop through the cluster, logging the train-inference mismatch every step.

Each step: sample `n` completions for a few prompts through the router (temperature 1, seeded),
reward them (app/demo/task.py), recompute every sampled token's logprob with the trainer's
fp32 copy of the policy and compare with what the engine returned (|Δ|, KL, PPO/GSPO clip rates —
the post-mortem's metrics), take one optimizer step, and publish the result as version v+1 with
PolicyPublisher, alternating the drain policy. All ≈ 0 is the proof of "correctness before
corrections": the engine's logprobs are the trainer's.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epochserve.app.demo.task import Problem, make_problems, reward
from epochserve.app.demo.trainer import Rollout, Trainer
from epochserve.app.verify.stats import MismatchStats, mismatch_stats
from epochserve.client.errors import GenerationError
from epochserve.client.generation import GenerationClient
from epochserve.client.publisher import PolicyPublisher
from epochserve.proto.results import GenerateResult
from epochserve.sampling import SamplingParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoopConfig:
    steps: int = 3
    prompts_per_step: int = 4
    n: int = 4  # samples per prompt: one group
    max_tokens: int = 12
    lr: float = 1e-5
    seed: int = 0
    # drain policy of step i's rollout: drains[i % len]; overlap (the default elsewhere) first
    drains: tuple[str, ...] = ("overlap", "finish", "abort")
    publish: str = "checkpoint"  # "checkpoint" (save + publish_checkpoint) or "broadcast" (publish_tensors)
    max_attempts: int = 4  # tries per group when the cluster answers with an explicit error


@dataclass
class StepReport:
    step: int
    sampled_version: int  # the version every group of this step ran on
    group_versions: list[int]
    reward_mean: float
    mismatch: MismatchStats
    loss: float
    published_version: int
    publish_seconds: float  # until the rollout was DONE
    drain: str  # the rollout's drain policy
    errors: dict[str, int] = field(default_factory=dict)  # explicit errors retried, by status

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "mismatch": self.mismatch.to_dict()}


def sample_group(client: GenerationClient, prompt: list[int], params: SamplingParams, n: int, version: int,
                 attempts: int, errors: Counter[str]) -> GenerateResult:  # fmt: skip
    """One group of n samples on version >= `version`; explicit errors are counted and retried."""
    for attempt in range(attempts):
        try:
            return client.generate(prompt, params, n=n, min_policy_version=version, timeout=300)
        except GenerationError as exc:
            errors[exc.code.name] += 1
            logger.warning("group retried after %s (attempt %d)", exc.code.name, attempt + 1)
            time.sleep(0.5)
    raise RuntimeError(f"a group failed {attempts} times in a row")


def run_rl_loop(
    router: str,
    admin: str,
    token: str,
    model_dir: Path,
    workdir: Path,
    config: LoopConfig = LoopConfig(),
    on_step: Callable[[StepReport], None] | None = None,
) -> list[StepReport]:
    workdir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    trainer = Trainer(model_dir, lr=config.lr)
    publisher = PolicyPublisher(admin, token, timeout=900)
    reports: list[StepReport] = []
    with GenerationClient(router) as client, (workdir / "rl_loop.jsonl").open("a") as log:
        version = client.get_policy().policy_version
        for step in range(config.steps):
            report = _one_step(client, trainer, publisher, step, version, rng, config, model_dir, workdir)
            version = report.published_version
            reports.append(report)
            log.write(json.dumps(report.to_json()) + "\n")
            log.flush()
            if on_step is not None:
                on_step(report)
    return reports


def _one_step(
    client: GenerationClient,
    trainer: Trainer,
    publisher: PolicyPublisher,
    step: int,
    version: int,
    rng: random.Random,
    config: LoopConfig,
    model_dir: Path,
    workdir: Path,
) -> StepReport:
    errors: Counter[str] = Counter()
    rollouts: list[Rollout] = []
    pairs: list[tuple[tuple[float, ...], list[float]]] = []
    group_versions, rewards = [], []
    for index, problem in enumerate(make_problems(rng, config.prompts_per_step)):
        prompt = trainer.encode(problem.text)
        params = SamplingParams(temperature=1.0, max_tokens=config.max_tokens, seed=step * 1000 + index)
        group = sample_group(client, prompt, params, config.n, version, config.max_attempts, errors)
        group_versions.append(group.policy_version)
        group_rewards = [_score(trainer, problem, s.token_ids) for s in group.samples]
        mean = sum(group_rewards) / len(group_rewards)
        rewards += group_rewards
        for sample, r in zip(group.samples, group_rewards, strict=True):
            pairs.append((sample.processed_logprobs, trainer.logprobs(prompt, sample.token_ids)))
            rollouts.append(Rollout(tuple(prompt), sample.token_ids, sample.processed_logprobs, r - mean))
    mismatch = mismatch_stats(pairs)  # before the optimizer step: trainer weights == sampled version
    loss = trainer.step(rollouts)
    start = time.perf_counter()
    new_version = max(group_versions) + 1
    drain = config.drains[step % len(config.drains)]
    if config.publish == "broadcast":
        publisher.publish_tensors(new_version, trainer.state_dict(), workdir / f"v{new_version}",
                                  config_from=model_dir, drain=drain, wait_for="done")  # fmt: skip
    else:
        path = publisher.save_checkpoint(new_version, trainer.state_dict(), workdir / f"v{new_version}",
                                         config_from=model_dir)  # fmt: skip
        publisher.publish_checkpoint(new_version, path, drain=drain, wait_for="done")
    return StepReport(
        step=step,
        sampled_version=version,
        group_versions=group_versions,
        reward_mean=sum(rewards) / len(rewards),
        mismatch=mismatch,
        loss=loss,
        published_version=new_version,
        publish_seconds=time.perf_counter() - start,
        drain=drain,
        errors=dict(errors),
    )


def _score(trainer: Trainer, problem: Problem, token_ids: tuple[int, ...]) -> float:
    return reward(problem, trainer.decode(token_ids))


def format_step(report: StepReport) -> str:
    m = report.mismatch
    return (
        f"step {report.step}: sampled on v{report.sampled_version} (groups {report.group_versions}), "
        f"reward {report.reward_mean:.2f} | mean|Δ| {m.mean_abs_delta:.2e} max|Δ| {m.max_abs_delta:.2e} "
        f"KL {m.kl_new_old:.2e} clip {m.token_clip_rate:.1%}/{m.sequence_clip_rate:.1%} | "
        f"published v{report.published_version} (drain={report.drain}) in {report.publish_seconds:.1f} s"
        + (f" | retried {report.errors}" if report.errors else "")
    )
