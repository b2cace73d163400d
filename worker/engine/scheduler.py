"""Scheduler: forms each step's batch under a token budget (continuous batching, FCFS).

One step mixes decodes and prefill chunks. Running sequences go first, in arrival order: each gets
its remaining uncomputed tokens (1 for a decode, a chunk of the prompt otherwise) as far as the
budget allows. Then waiting sequences are admitted in arrival order while the budget, the sequence
limit and the free KV blocks last. When a running sequence needs a block and none is free, the
most recently admitted running sequence is preempted: its blocks are freed and it goes back to the
front of the queue to be recomputed later (its tokens so far are kept, so the result is the same).

Pure CPU bookkeeping over Sequence and BlockManager; never touches tensors.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from epochserve.worker.engine.block_manager import BlockManager
from epochserve.worker.engine.sequence import Sequence, SequenceStatus

logger = logging.getLogger(__name__)

# Prompt positions a step scores at most (return_prompt_logprobs): each is an fp32 logits row, so
# 512 rows are 256 MB at a 128k vocabulary, plus the filter's temporaries. Longer prompts score
# over several steps.
MAX_PROMPT_SCORES_PER_STEP = 512


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work. Created by Scheduler.schedule, consumed by ModelRunner and Engine.

    seqs[i] computes num_new_tokens[i] tokens starting at its num_computed_tokens; it samples a
    next token only when that reaches the end of its tokens (see `samples`).
    """

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    num_prompt_scores: int = 0  # prompt positions whose logprobs this step computes

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def samples(self, index: int) -> bool:
        seq = self.seqs[index]
        return seq.num_computed_tokens + self.num_new_tokens[index] == seq.num_tokens

    def is_empty(self) -> bool:
        return not self.seqs

    def split(self, first: Callable[[Sequence], bool]) -> tuple[ScheduledBatch, ScheduledBatch]:
        """(the sequences for which `first` holds, the others), each with its token counts."""
        parts = (ScheduledBatch(), ScheduledBatch())
        for seq, num_new in zip(self.seqs, self.num_new_tokens, strict=True):
            part = parts[0] if first(seq) else parts[1]
            part.seqs.append(seq)
            part.num_new_tokens.append(num_new)
        return parts


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # since start: a pool that runs out shows here
        # drain=overlap: the version starting beside a retiring one. Its sequences get max_num_seqs
        # slots of their own, so that it starts at once even when the old version fills the batch
        # (each version is its own forward pass, of at most max_num_seqs rows).
        self.overlap_version: int | None = None

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Forget a finished or aborted sequence and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self._schedule_running(batch, self.max_num_batched_tokens)
        if not batch.preempted:
            self._schedule_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        queue = deque(self.running)
        while queue and budget > 0:
            seq = queue.popleft()
            num_new = self._chunk(seq, budget, batch)
            if num_new == 0:
                continue  # a prompt to score, and this step's scoring rows are taken
            needed = self.block_manager.num_blocks_needed(seq, num_new)
            while not self.block_manager.can_allocate(needed):
                victim = queue.pop() if queue else seq
                self._preempt(victim, batch)
                if victim is seq:
                    break
            else:
                if needed:
                    self.block_manager.allocate(seq, num_new)
                self._add(batch, seq, num_new)
                budget -= num_new
        return budget

    def _slots_taken(self) -> list[int]:
        """Running sequences [not of the overlap's new version, of it]; outside an overlap all
        are in the first (no walk over them: this runs every step)."""
        if self.overlap_version is None:
            return [len(self.running), 0]
        taken = [0, 0]
        for seq in self.running:
            taken[self._side(seq)] += 1
        return taken

    def _side(self, seq: Sequence) -> int:
        return int(seq.policy_version == self.overlap_version)

    def has_room_for_waiting(self) -> bool:
        """Whether a waiting sequence has a slot (blocks and the token budget aside)."""
        taken = self._slots_taken()
        return any(taken[self._side(seq)] < self.max_num_seqs for seq in self.waiting)

    def _schedule_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        skipped: list[Sequence] = []
        taken = self._slots_taken()
        sides = 1 if self.overlap_version is None else 2
        while self.waiting and budget > 0 and min(taken[:sides]) < self.max_num_seqs:
            seq = self.waiting[0]
            side = self._side(seq)
            if seq.waits_for_leader() or taken[side] >= self.max_num_seqs:
                skipped.append(self.waiting.popleft())  # (overlap) the other version has a slot
                continue
            num_hit_blocks = self.block_manager.admit(seq)
            num_new = self._chunk(seq, budget, batch)
            needed = self.block_manager.num_blocks_needed(seq, num_new)
            if num_new == 0 or not self.block_manager.can_allocate(needed):
                self.block_manager.free(seq)  # give back the prefix hits; FCFS: stop here
                break
            self.block_manager.allocate(seq, num_new)
            self.waiting.popleft()
            if seq.times.first_scheduled is None:
                seq.times.first_scheduled = time.monotonic()
                seq.num_prefix_hit_blocks = num_hit_blocks
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            taken[side] += 1
            self._add(batch, seq, num_new)
            budget -= num_new
        self.waiting.extendleft(reversed(skipped))

    @staticmethod
    def _chunk(seq: Sequence, budget: int, batch: ScheduledBatch) -> int:
        """How many of seq's uncomputed tokens this step computes: all that the token budget allows,
        and for a prompt being scored, no more than the step's scoring rows left allow."""
        num_new = min(seq.num_uncomputed_tokens, budget)
        if not seq.must_score_prompt():
            return num_new
        start = seq.num_computed_tokens
        first_scored = max(start, len(seq.prompt_logprobs))  # after a preemption: recomputed, not rescored
        room = MAX_PROMPT_SCORES_PER_STEP - batch.num_prompt_scores
        return max(0, min(num_new, first_scored + room - start))

    @staticmethod
    def _add(batch: ScheduledBatch, seq: Sequence, num_new: int) -> None:
        batch.seqs.append(seq)
        batch.num_new_tokens.append(num_new)
        if seq.must_score_prompt():
            batch.num_prompt_scores += len(prompt_positions_to_score(seq, num_new))

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        """Free seq's blocks and queue it first for recompute (its tokens so far are kept)."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)
        logger.debug("preempted seq %d of request %s", seq.seq_id, seq.request_id)


def prompt_positions_to_score(seq: Sequence, num_new: int) -> range:
    """The prompt positions whose next-token logprob a chunk of num_new tokens from
    seq.num_computed_tokens yields: those not scored yet, before the prompt's last token."""
    if not seq.must_score_prompt():
        return range(0)
    start = max(seq.num_computed_tokens, len(seq.prompt_logprobs))
    return range(start, min(seq.num_computed_tokens + num_new, seq.num_prompt_scores))
