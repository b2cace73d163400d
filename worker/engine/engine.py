"""Engine: owns the model, KV pool, block manager, scheduler and sampler of one worker, and
`weights` (WeightsControl, weights/control.py): staging, swapping and dropping versions on every rank.

One thread drives it (see engine_loop.py): add_request / abort_request / step are not
thread-safe. Each step runs the whole model once over a ScheduledBatch; weights and the policy
version change only between steps (set_policy_version), never inside one.

Async scheduling (run-ahead): when the step after a decode step is certain — the same sequences,
one token each, none able to end by length, no waiting sequence able to start, blocks free — the
engine queues it on the device behind the running one, its input tokens taken on the device from
the running step's samples, and only then waits for those samples. The host's work (planning, launching,
sampling bookkeeping) then overlaps the GPU's. The sequences hold a placeholder for the token in
flight until it arrives. A sequence that stops meanwhile has its run-ahead row discarded. The
outputs are those of the synchronous path (tests/unit/worker/test_async_scheduling.py).
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from dataclasses import dataclass
from itertools import count

import numpy as np
import torch

from epochserve.controlplane.store.records import DrainPolicy
from epochserve.errors import InvalidRequestError, VersionMismatchError
from epochserve.proto.convert import OutputMode, ParsedGenerateRequest, rollout_abort_reason
from epochserve.sampling import ModelLimits
from epochserve.worker.config import EngineConfig
from epochserve.worker.engine.block_manager import BlockManager, BlockUsage
from epochserve.worker.engine.drain import Drain
from epochserve.worker.engine.model_runner import ScoredPrompt, StepLogits
from epochserve.worker.engine.model_setup import setup_rank
from epochserve.worker.engine.outputs import FinishInfo, SequenceOutput
from epochserve.worker.engine.routing import PendingRouting, RoutingLog, RoutingShape
from epochserve.worker.engine.sampler import PendingSample, Sampler
from epochserve.worker.engine.scheduler import ScheduledBatch, Scheduler
from epochserve.worker.engine.sequence import FinishReason, Sequence, SequenceStatus
from epochserve.worker.layers.parallel import SINGLE_DEVICE, TensorParallel
from epochserve.worker.tp.commands import CommandChannel
from epochserve.worker.weights.control import WeightsControl

logger = logging.getLogger(__name__)


class StartDecision(enum.Enum):
    START = "start"  # start now
    HOLD = "hold"  # pinned to a version this worker is about to serve: wait for the swap


PLACEHOLDER_TOKEN = -1  # stands for a token still on the device (never reaches a model or a client)


@dataclass(frozen=True, slots=True)
class LaunchedStep:
    """A step queued on the device. Created by Engine._launch, consumed by Engine._resolve."""

    batch: ScheduledBatch
    seqs: list[Sequence]  # the sampling sequences, in logits row order
    sample: PendingSample | None  # None when no sequence samples
    # return_prompt_logprobs: the prompt positions this step scored and their logprobs (on the
    # device, in the same order), if any.
    scored: list[ScoredPrompt]
    prompt_logprobs: torch.Tensor | None
    routing: PendingRouting | None  # return_routed_experts: this step's routing rows


class Engine:
    def __init__(
        self, config: EngineConfig, tp: TensorParallel = SINGLE_DEVICE, channel: CommandChannel | None = None
    ) -> None:
        self.config = config
        self.tp = tp
        setup = setup_rank(config, tp)
        self.model_config = setup.model_config
        self.model = setup.model
        self.kv_pool = setup.kv_pool
        self.limits = ModelLimits(
            vocab_size=self.model_config.vocab_size, max_model_len=setup.max_model_len, max_n=config.max_n
        )
        self.block_manager = BlockManager(setup.num_blocks, config.block_size, config.enable_prefix_cache)
        self.block_manager.set_policy_version(config.policy_version)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = setup.make_runner(config, tp, channel)
        updater = setup.make_updater(config, tp)
        self.runner.twins = updater.runnable_twins  # drain=overlap steps of the new version
        self.weights = WeightsControl(updater, channel)
        self.sampler = Sampler(batch_invariant=config.batch_invariant, ops=self.model.lm_head.ops)
        self.policy_version = config.policy_version
        self.eos_token_ids = frozenset(self.model_config.eos_token_ids)
        self.routing_shape = RoutingShape.of(self.model_config)  # None: a dense model
        self._requests: dict[str, list[Sequence]] = {}
        self._seq_ids = count()
        self.draining: Drain | None = None  # set from a rollout's commit until the swap
        self.last_drain: Drain | None = None  # the latest drain, kept for its report
        on_cuda = config.torch_device.type == "cuda"
        wanted = config.async_scheduling == "on" or (config.async_scheduling == "auto" and on_cuda)
        self.run_ahead = wanted
        # The step in flight between two calls to step(): one launch, or one per version (overlap).
        self._launched: list[LaunchedStep] = []
        self.num_run_ahead_steps = 0  # steps queued behind a running one (diagnostics, tests)

    # ---- requests ------------------------------------------------------------------------
    def start_decision(self, request: ParsedGenerateRequest) -> StartDecision:
        """Whether a request can start now (ADMIT), must wait for the swap of a drain (HOLD), or
        never runs here (VersionMismatchError: pinned to a version this worker does not serve, or
        retires under drain=abort). During a finish or abort drain, requests pinned to the next
        version and unpinned ones wait for the swap, so that a steady stream of new requests cannot
        keep the old version alive forever; during an overlap they start at once on the new one.
        Requests pinned to the old version start while it finishes (finish, overlap).
        """
        pinned, drain = request.policy_version, self.draining
        if drain is not None:
            if pinned is None or pinned == drain.new:
                return StartDecision.START if drain.overlapping else StartDecision.HOLD
            if pinned == drain.old and drain.takes_old_work:
                return StartDecision.START
        elif pinned is None or pinned == self.policy_version:
            return StartDecision.START
        retired = drain is not None and pinned == drain.old and drain.retired is not None
        raise VersionMismatchError(
            f"request pinned to policy version {pinned}; this worker serves {self.policy_version}"
            + (f" and is moving to {drain.new}" if drain else "")
            + (f" (v{pinned} retired here)" if retired else "")
        )

    def check_supported(self, request: ParsedGenerateRequest) -> None:
        """Refuse what this model cannot do (InvalidRequestError). The router does not know the
        model, so the worker's service calls this at admission. Reads only immutable state: safe
        from any thread."""
        if request.sampling.return_routed_experts and self.routing_shape is None:
            raise InvalidRequestError(
                "sampling.return_routed_experts",
                f"the served model ({self.model_config.architecture}) is dense: it routes no token "
                "to experts; routed experts exist for mixture-of-experts models only",
            )

    def add_request(self, request: ParsedGenerateRequest) -> None:
        """Queue a validated request as n sequences. Raises for a duplicate id, a wrong version pin
        or a feature the model lacks (check_supported)."""
        self.check_supported(request)
        if request.request_id in self._requests:
            raise InvalidRequestError("request_id", f"{request.request_id!r} is already in flight")
        if self.start_decision(request) is not StartDecision.START:
            raise VersionMismatchError(f"request {request.request_id} cannot start before the version swap")
        seed = request.sampling.seed if request.sampling.seed is not None else secrets.randbits(63)
        version = self.policy_version if request.policy_version is None else request.policy_version
        seqs: list[Sequence] = []
        for index in range(request.n):
            seqs.append(
                Sequence(
                    seq_id=next(self._seq_ids),
                    request_id=request.request_id,
                    sample_index=index,
                    prompt_token_ids=list(request.prompt_token_ids),
                    sampling=request.sampling,
                    max_tokens=request.max_tokens,
                    seed=seed,
                    policy_version=version,
                    prefill_leader=seqs[0] if index > 0 and self.config.enable_prefix_cache else None,
                    final_only=request.output_mode is OutputMode.FINAL,
                    routing=self._routing_log(request),
                )
            )
        self._requests[request.request_id] = seqs
        for seq in seqs:
            self.scheduler.add(seq)
            if self.draining is not None and version == self.draining.old:
                self.draining.started_old()

    def _routing_log(self, request: ParsedGenerateRequest) -> RoutingLog | None:
        if not request.sampling.return_routed_experts or self.routing_shape is None:
            return None
        return RoutingLog(self.routing_shape, capacity=len(request.prompt_token_ids) + 16)

    def abort_request(self, request_id: str, reason: str) -> list[SequenceOutput]:
        """Finish every unfinished sample of a request with ABORT; frees their blocks at once.
        The step in flight, if any, is resolved first: its outputs come first in the list."""
        outputs = self._flush()
        for seq in self._requests.pop(request_id, []):
            if not seq.is_finished:
                seq.abort_reason = reason
                outputs.append(self._finish(seq, FinishReason.ABORT))
        return outputs

    def has_work(self) -> bool:
        return self.scheduler.has_work() or bool(self._launched)

    def idle(self) -> None:
        """Called by the loop when there is no work (TP: heartbeats to the followers)."""
        self.runner.heartbeat()

    def prepare_twins(self) -> None:
        """Ready verified staged twins for drain=overlap between steps (ModelRunner.prepare_twins),
        so that the steps after a commit pay nothing for them."""
        self.runner.prepare_twins()

    def close(self) -> None:
        """Release the followers (TP); the engine must not step afterwards."""
        self.runner.shutdown_followers()

    # ---- stepping ------------------------------------------------------------------------
    def step(self) -> list[SequenceOutput]:
        """Run one batch through the model and sample; returns what each sampling sequence got.

        With run-ahead, a call may leave its decode step in flight and return nothing; the next
        call queues the step after it, then returns the outputs of the one in flight. During a
        drain=overlap a step is two launches, one per version (_launch_by_version)."""
        launched, self._launched = self._launched, []
        if not launched:
            batch = self.scheduler.schedule()
            if batch.is_empty():
                return []
            launched = self._launch_by_version(batch)
            if self.run_ahead and self._can_run_ahead(launched):
                self._launched = launched  # resolved by the next call, behind its successor
                return []
            return self._resolve_all(launched, placeholders=False)
        if not self._can_run_ahead(launched):
            return self._resolve_all(launched, placeholders=False)
        for step in launched:
            assert step.sample is not None
            successor = self._next_decode(step.seqs)
            self._launched.append(self._launch(successor, step.sample.token_ids, self._on_twins(step.seqs)))
        self.num_run_ahead_steps += 1
        return self._resolve_all(launched, placeholders=True)

    def _launch_by_version(self, batch: ScheduledBatch) -> list[LaunchedStep]:
        """`batch` launched as one step; during a drain=overlap as one per version, each its own
        forward pass: the old version's sequences on the live weights, the new one's on the staged
        twins (drain.py). They are resolved in the same order."""
        if self._twins_version() is None:
            return [self._launch(batch)]
        twins, live = batch.split(lambda seq: self._on_twins([seq]))
        return [self._launch(part, on_twins=part is twins) for part in (live, twins) if part.seqs]

    def _twins_version(self) -> int | None:
        """The version whose sequences run on the staged twins: an overlap's new version, from
        the commit until the twins are promoted to the live weights (complete_swap)."""
        drain = self.draining
        return drain.new if drain is not None and drain.policy is DrainPolicy.OVERLAP else None

    def _on_twins(self, seqs: list[Sequence]) -> bool:
        """Whether these sequences (all of one version) run on the staged twins."""
        return seqs[0].policy_version == self._twins_version()

    def _resolve_all(self, launched: list[LaunchedStep], placeholders: bool) -> list[SequenceOutput]:
        return [out for step in launched for out in self._resolve(step, placeholders)]

    def _launch(self, batch: ScheduledBatch, input_ids=None, on_twins: bool = False) -> LaunchedStep:
        """Queue the model and the sampling of `batch` on the device; the host does not wait.
        on_twins: run on the staged version's twins (drain=overlap), not the live weights."""
        logits = self.runner.execute(batch, input_ids, on_twins)
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += num_new
        sample = self.sampler.launch(logits.sampling, logits.seqs) if logits.seqs else None
        prompt_logprobs = self._score_prompts(logits) if logits.scored else None
        return LaunchedStep(batch, logits.seqs, sample, logits.scored, prompt_logprobs, logits.routing)

    def _score_prompts(self, logits: StepLogits) -> torch.Tensor:
        params, targets = [], []
        for seq, positions in logits.scored:
            params += [seq.sampling] * len(positions)
            targets += seq.prompt_token_ids[positions.start + 1 : positions.stop + 1]
        return self.sampler.score(logits.prompt, params, targets)

    def _can_run_ahead(self, launched: list[LaunchedStep]) -> bool:
        """Whether the step after `launched` is certain: every sequence of it samples, all are still
        running and none can end by length on this token, no waiting sequence could be admitted
        (none waits, or the running ones fill their slots), and one more token each fits in the
        free blocks. (A stop token may still end one: its next row is discarded, and a waiting
        sequence starts a step later than it would have, with the same tokens.)"""
        if any(step.sample is None or len(step.seqs) != len(step.batch.seqs) for step in launched):
            return False
        seqs = [seq for step in launched for seq in step.seqs]
        scheduler = self.scheduler
        if not _same_sequences(scheduler.running, seqs):
            return False
        if scheduler.has_room_for_waiting():
            return False
        if len(seqs) > self.scheduler.max_num_batched_tokens:
            return False
        max_len = self.limits.max_model_len
        if any(s.num_generated_tokens + 1 >= s.max_tokens or s.num_tokens + 1 >= max_len for s in seqs):
            return False
        needed = sum(self.block_manager.num_blocks_needed(s, 1) for s in seqs)
        return self.block_manager.can_allocate(needed)

    def _next_decode(self, seqs: list[Sequence]) -> ScheduledBatch:
        """The decode step after the one in flight: a placeholder for each sequence's coming token."""
        batch = ScheduledBatch()
        for seq in seqs:
            seq.output_token_ids.append(PLACEHOLDER_TOKEN)
            self.block_manager.allocate(seq, 1)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(1)
        return batch

    def _flush(self) -> list[SequenceOutput]:
        """Resolve the steps in flight, if any (before anything changes the sequences they hold)."""
        launched, self._launched = self._launched, []
        return self._resolve_all(launched, placeholders=False)

    def _resolve(self, launched: LaunchedStep, placeholders: bool) -> list[SequenceOutput]:
        """Wait for a launched step's samples and apply them. placeholders: each sequence holds one
        for this step's token (its successor is in flight), which the token replaces."""
        if launched.routing is not None:  # before the blocks are indexed: they keep their routing
            launched.routing.apply()
        if launched.prompt_logprobs is not None:
            self._apply_prompt_scores(launched)
        if launched.sample is None:
            self._register_computed(launched.batch.seqs)
            return []
        sampled = self.sampler.collect(launched.sample)
        for i, seq in enumerate(launched.seqs):
            if placeholders:
                seq.output_token_ids.pop()
            if not seq.is_finished and sampled.errors[i] is None:
                seq.output_token_ids.append(sampled.token_ids[i])
        # Blocks are indexed only once every token in them is real (never a placeholder).
        self._register_computed([s for s in launched.batch.seqs if s.num_computed_tokens <= s.num_tokens])
        now = time.monotonic()
        outputs = []
        rows = zip(
            launched.seqs,
            sampled.token_ids,
            sampled.processed_logprobs,
            sampled.errors,
            sampled.raw_logprobs,
            sampled.top_logprobs,
            sampled.support_sizes,
            strict=True,
        )
        for seq, token, logprob, error, raw, top, support in rows:
            if seq.is_finished:  # ended while this step ran (a stop token in the step before)
                continue
            if error is not None:
                seq.error = error
                logger.error("request %s sample %d failed: %s", seq.request_id, seq.sample_index, error)
                outputs.append(self._finish(seq, FinishReason.ERROR))
                continue
            seq.processed_logprobs.append(logprob)
            if raw is not None:
                seq.raw_logprobs.append(raw)
            if top is not None:
                seq.top_logprobs.append(top)
            if support is not None:
                seq.support_sizes.append(support)
            if seq.times.first_token is None:
                seq.times.first_token = now
                if self.last_drain is not None:
                    self.last_drain.saw_token(seq.policy_version, now)
            seq.times.last_token = now
            finish = self._finish_reason(seq, token)
            if seq.final_only:
                if finish is not None:
                    outputs.append(self._finish(seq, finish))
                continue
            outputs.append(
                SequenceOutput(
                    seq.request_id,
                    seq.sample_index,
                    seq.policy_version,
                    (token,),
                    (logprob,),
                    () if raw is None else (raw,),
                    () if top is None else ((tuple(top[0]), tuple(top[1])),),
                    () if support is None else (support,),
                    None if finish is None else self._finish(seq, finish).finish,
                    tuple(seq.prompt_scores()) if seq.num_generated_tokens == 1 else (),
                    *self._step_routing(seq),
                )
            )
        return outputs

    @staticmethod
    def _step_routing(seq: Sequence) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(the routing of seq's newest token, of its prompt with its first token) when it asked."""
        if seq.routing is None:
            return None, None
        newest = seq.num_generated_tokens
        prompt = seq.prompt_routing() if newest == 1 else None
        return seq.token_routing(newest - 1, newest), prompt

    @staticmethod
    def _apply_prompt_scores(launched: LaunchedStep) -> None:
        assert launched.prompt_logprobs is not None
        values = launched.prompt_logprobs.tolist()  # a prefill step's: never one run ahead
        offset = 0
        for seq, positions in launched.scored:
            if len(seq.prompt_logprobs) == positions.start:  # else preempted and rescheduled meanwhile
                seq.prompt_logprobs += values[offset : offset + len(positions)]
            offset += len(positions)

    def _register_computed(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            if not seq.is_finished:
                self.block_manager.register_computed(seq)

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        if token in seq.sampling.stop_token_ids or (
            not seq.sampling.ignore_eos and token in self.eos_token_ids
        ):
            return FinishReason.STOP
        if seq.num_generated_tokens >= seq.max_tokens or seq.num_tokens >= self.limits.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason) -> SequenceOutput:
        """Mark seq finished, release its blocks, forget its request once every sample ended. The
        output: the finish alone, or for a FINAL sequence the finish with every token."""
        self.scheduler.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        if self.draining is not None and seq.policy_version == self.draining.old:
            self.draining.ended_old(reason is FinishReason.ABORT, time.monotonic())
        siblings = self._requests.get(seq.request_id, [])
        if siblings and all(s.is_finished for s in siblings):
            del self._requests[seq.request_id]
        finish = FinishInfo.of(seq)
        if not seq.final_only:
            return SequenceOutput(seq.request_id, seq.sample_index, seq.policy_version, finish=finish)
        return SequenceOutput(
            seq.request_id,
            seq.sample_index,
            seq.policy_version,
            tuple(seq.output_token_ids),
            tuple(seq.processed_logprobs),
            tuple(seq.raw_logprobs),
            tuple((tuple(ids), tuple(values)) for ids, values in seq.top_logprobs),
            tuple(seq.support_sizes),
            finish,
            tuple(seq.prompt_scores()),
            None if seq.routing is None else seq.token_routing(0, seq.num_generated_tokens),
            seq.prompt_routing(),
        )

    # ---- versions and stats --------------------------------------------------------------
    def begin_drain(
        self, version: int, policy: DrainPolicy, deadline_seconds: float | None = None
    ) -> list[SequenceOutput]:
        """Retire the current version's work on the way to `version` (drain.py, docs/design.md §5).

        finish: running sequences complete on the current weights, new requests wait for the swap;
        abort: they end now with an ABORT finish whose reason says a rollout retired them (routers
        re-run those that streamed nothing); overlap: new requests start at once on the verified
        staged twins of `version` while the old sequences complete (finish when no runnable twins
        of `version` are staged: the drain's reason says so). At `deadline_seconds` after now the
        old sequences still running end with ABORT (expire_drain).
        """
        outputs = self._flush()  # a run-ahead step in flight runs on the old version's terms
        policy, reason = DrainPolicy(policy), ""
        if policy is DrainPolicy.OVERLAP and (reason := self._overlap_refusal(version)):
            logger.warning("drain=overlap to v%d applied as finish: %s", version, reason)
            policy = DrainPolicy.FINISH
        drain = Drain(self.policy_version, version, policy, deadline_seconds, reason)
        drain.old_running = sum(not s.is_finished for seqs in self._requests.values() for s in seqs)
        if drain.old_running == 0:
            drain.retired = drain.started
        self.draining = self.last_drain = drain
        if policy is DrainPolicy.OVERLAP:
            dropped = self.block_manager.set_policy_version(version)
            logger.info("overlap: v%d beside v%d (%d cached blocks dropped)", version, drain.old, dropped)
            self.policy_version = self.scheduler.overlap_version = version
            return outputs
        if policy is DrainPolicy.ABORT:
            outputs += self._abort_version(drain.old, rollout_abort_reason(version))
        return outputs

    def _overlap_refusal(self, version: int) -> str:
        """Why an overlap to `version` cannot run here ("" when it can)."""
        staged = self.weights.verified()
        if staged is None or staged.version != version:
            return f"no verified staged weights of v{version}"
        if not staged.runnable:
            return "the staged weights are in host memory (no device memory for two weight sets)"
        return ""

    def expire_drain(self, now: float) -> list[SequenceOutput]:
        """At the drain's deadline, end every old-version sequence still running with ABORT."""
        drain = self.draining
        if drain is None or not drain.deadline_passed(now):
            return []
        reason = rollout_abort_reason(drain.new, f"drain deadline of {drain.deadline_seconds:g} s")
        logger.info("drain to v%d: deadline passed, aborting what v%d still runs", drain.new, drain.old)
        return self._abort_version(drain.old, reason)

    def _abort_version(self, version: int, reason: str) -> list[SequenceOutput]:
        outputs: list[SequenceOutput] = []  # abort_request resolves a step in flight first
        for request_id, seqs in list(self._requests.items()):
            if seqs and seqs[0].policy_version == version:
                outputs += self.abort_request(request_id, reason)
        return outputs

    @property
    def ready_to_swap(self) -> bool:
        """finish/abort: every old sequence ended; the staged weights can be swapped in."""
        drain = self.draining
        return drain is not None and drain.policy is not DrainPolicy.OVERLAP and not self.has_work()

    @property
    def ready_to_promote(self) -> bool:
        """overlap: the old version retired; the twins can replace the live weights."""
        drain = self.draining
        return drain is not None and drain.policy is DrainPolicy.OVERLAP and drain.retired is not None

    def complete_swap(self, version: int) -> None:
        """The weights of `version` are live (swapped in place between steps): serve it. After an
        overlap the engine already serves it; its steps now run on the live weights again."""
        drain = self.draining
        if drain is not None and drain.policy is DrainPolicy.OVERLAP:
            assert drain.retired is not None and version == drain.new == self.policy_version
        else:
            self.set_policy_version(version)
        self.draining = self.scheduler.overlap_version = None

    def set_policy_version(self, version: int) -> None:
        """Serve `version` from the next step on. Only between steps and with no work of another
        version in flight; drops every prefix-cache entry of other versions."""
        if self.has_work():
            raise RuntimeError("set_policy_version with sequences in flight; drain or abort them first")
        dropped = self.block_manager.set_policy_version(version)
        logger.info(
            "policy version %d -> %d (%d cached blocks dropped)", self.policy_version, version, dropped
        )
        self.policy_version = version

    def block_usage(self) -> BlockUsage:
        return self.block_manager.usage()

    @property
    def kernel_mode(self) -> str:
        """What produced the logits: "torch", "triton", "triton+graphs", "batch_invariant"(+graphs)."""
        ops = self.model.lm_head.ops
        mode = "batch_invariant" if getattr(ops, "batch_invariant", False) else ops.name
        return f"{mode}+graphs" if self.runner.graphs is not None else mode

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_preemptions(self) -> int:
        return self.scheduler.num_preemptions


def _same_sequences(running: list[Sequence], seqs: list[Sequence]) -> bool:
    """Whether `seqs` are exactly the running sequences, in any order."""
    if running == seqs:  # the usual case: one launch, in the scheduler's order
        return True
    return len(running) == len(seqs) and {id(s) for s in running} == {id(s) for s in seqs}
