"""Audit on the serving engine (`epochctl verify --engine`): send each sampled response back through a
router as a scoring request — prompt + completion as the prompt, the same sampling parameters, and
`return_prompt_logprobs` — pinned to the version that sampled it (min_policy_version), and compare the
processed logprobs the engine scores the completion with to those it returned when it sampled it.

No transformers here: this checks the engine against itself (sampling path vs prefill scoring path,
another batch, another worker), on whatever hardware serves the cluster, at serving speed.

A router pins a request to the committed version, never an older one (docs/design.md, I2): samples
of a version the cluster has moved past cannot be re-scored under it, and are listed apart, not
failed. A scoring request that fails (gRPC error) is listed as an error, which fails the audit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from epochserve.app.verify.audit import ResponseRecord, VerifiedSample
from epochserve.app.verify.stats import MismatchStats, mismatch_stats
from epochserve.client.errors import GenerationError
from epochserve.client.generation import AsyncGenerationClient
from epochserve.sampling import SamplingParams

MAX_IN_FLIGHT = 16  # scoring requests sent at once: enough to batch on the engine, not to flood a queue


@dataclass
class EngineAuditReport:
    """The engine's re-scoring against its sampling-time logprobs, per version and overall."""

    overall: MismatchStats
    by_version: dict[int, MismatchStats]
    mixed_version_responses: list[str] = field(default_factory=list)  # request ids (I1 violations)
    retired: list[str] = field(
        default_factory=list
    )  # "request_id[sample]": the cluster serves a newer version
    errors: list[str] = field(default_factory=list)  # "request_id[sample]: why" the scoring request failed

    def to_dict(self) -> dict[str, object]:
        return {
            "mode": "engine",
            "overall": self.overall.to_dict(),
            "by_version": {str(v): s.to_dict() for v, s in sorted(self.by_version.items())},
            "mixed_version_responses": self.mixed_version_responses,
            "retired": self.retired,
            "errors": self.errors,
        }


def scoring_params(sampled_with: SamplingParams) -> SamplingParams:
    """The sampled request's processing (temperature, top-k, top-p, min-p) with prompt logprobs asked
    for; one generated token, the least a request can ask, and none of the per-token extras."""
    return replace(
        sampled_with,
        max_tokens=1,
        return_prompt_logprobs=True,
        return_support_size=False,
        return_raw_logprobs=False,
        return_routed_experts=False,
        num_top_logprobs=0,
    )


async def audit_on_engine(
    records: Iterable[ResponseRecord],
    client: AsyncGenerationClient,
    tokenize: Callable[[str], list[int]] | None = None,
    progress: Callable[[int], None] | None = None,
    timeout: float = 300.0,
) -> EngineAuditReport:
    """Re-score every sample of `records` through `client`'s router; `timeout` bounds each request."""
    jobs: list[tuple[str, list[int], SamplingParams, VerifiedSample]] = []
    mixed: list[str] = []
    for record in records:
        if len({s.policy_version for s in record.samples}) > 1:
            mixed.append(record.request_id)
        prompt = list(record.prompt_token_ids)
        if not prompt and tokenize is not None:
            prompt = tokenize(record.prompt_text)
        for index, sample in enumerate(record.samples):
            if sample.token_ids:  # nothing was sampled, nothing to compare
                jobs.append((f"{record.request_id}[{index}]", prompt, record.sampling, sample))
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    done = 0

    async def one(prompt: list[int], sampling: SamplingParams, sample: VerifiedSample) -> list[float]:
        nonlocal done
        async with gate:
            scored = await _rescore(client, prompt, sampling, sample, timeout)
        done += 1
        if progress is not None:
            progress(done)
        return scored

    outcomes = await asyncio.gather(*(one(p, s, sample) for _, p, s, sample in jobs), return_exceptions=True)
    return _report(jobs, outcomes, mixed)


class _Retired(Exception):
    """The router pinned the scoring request to a newer version than the sample's."""


async def _rescore(
    client: AsyncGenerationClient,
    prompt: Sequence[int],
    sampling: SamplingParams,
    sample: VerifiedSample,
    timeout: float,
) -> list[float]:
    """The engine's processed logprobs of sample's tokens, scored after the prompt."""
    result = await client.generate(
        [*prompt, *sample.token_ids],
        scoring_params(sampling),
        min_policy_version=sample.policy_version,
        timeout=timeout,
    )
    scored = result.samples[0]
    if scored.policy_version != sample.policy_version:
        raise _Retired()
    # prompt_logprobs[i - 1] scores input token i: the completion's start at len(prompt) - 1
    completion = list(scored.prompt_logprobs[len(prompt) - 1 :])
    if len(completion) != len(sample.token_ids):
        raise ValueError(f"{len(completion)} scores came back for {len(sample.token_ids)} tokens")
    return completion


def _report(
    jobs: list[tuple[str, list[int], SamplingParams, VerifiedSample]],
    outcomes: list[list[float] | BaseException],
    mixed: list[str],
) -> EngineAuditReport:
    pairs: dict[int, list[tuple[tuple[float, ...], list[float]]]] = {}
    retired: list[str] = []
    errors: list[str] = []
    for (name, _, _, sample), outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, _Retired):
            retired.append(name)
        elif isinstance(outcome, (GenerationError, ValueError)):
            errors.append(f"{name}: {outcome}")
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            pairs.setdefault(sample.policy_version, []).append((sample.processed_logprobs, outcome))
    every = [pair for version_pairs in pairs.values() for pair in version_pairs]
    return EngineAuditReport(
        overall=mismatch_stats(every),
        by_version={v: mismatch_stats(p) for v, p in pairs.items()},
        mixed_version_responses=mixed,
        retired=retired,
        errors=errors,
    )
