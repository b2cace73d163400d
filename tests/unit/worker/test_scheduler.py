"""Scheduler: token budget, chunked prefill, FCFS admission, preemption, sibling samples."""

from epochserve.sampling import SamplingParams
from epochserve.worker.engine.block_manager import BlockManager
from epochserve.worker.engine.scheduler import Scheduler
from epochserve.worker.engine.sequence import Sequence, SequenceStatus

BS = 4


def seq(seq_id, num_prompt, leader=None):
    return Sequence(
        seq_id=seq_id,
        request_id=f"r{seq_id}",
        sample_index=0,
        prompt_token_ids=list(range(seq_id * 100, seq_id * 100 + num_prompt)),
        sampling=SamplingParams(),
        max_tokens=64,
        seed=0,
        policy_version=0,
        prefill_leader=leader,
    )


def advance(batch, manager, sample_token=7):
    """Pretend the step ran: tokens computed; sequences that reached their end get a new token."""
    for i, (s, n) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
        samples = batch.samples(i)
        s.num_computed_tokens += n
        manager.register_computed(s)
        if samples:
            s.output_token_ids.append(sample_token)


def test_prefill_is_chunked_by_the_token_budget_and_decodes_come_first():
    manager = BlockManager(64, BS)
    scheduler = Scheduler(manager, max_num_seqs=8, max_num_batched_tokens=10)
    a, b = seq(1, 6), seq(2, 12)
    scheduler.add(a)
    scheduler.add(b)
    batch = scheduler.schedule()
    assert batch.num_new_tokens == [6, 4]  # a whole, b's first chunk
    assert batch.samples(0) and not batch.samples(1)
    advance(batch, manager)
    batch = scheduler.schedule()
    assert [s.seq_id for s in batch.seqs] == [1, 2]
    assert batch.num_new_tokens == [1, 8]  # a decodes, b continues its prompt
    advance(batch, manager)
    assert b.num_computed_tokens == 12 and b.num_generated_tokens == 1


def test_admission_is_first_come_first_served_and_bounded_by_max_num_seqs():
    manager = BlockManager(64, BS)
    scheduler = Scheduler(manager, max_num_seqs=2, max_num_batched_tokens=100)
    seqs = [seq(i, 3) for i in range(1, 4)]
    for s in seqs:
        scheduler.add(s)
    batch = scheduler.schedule()
    assert [s.seq_id for s in batch.seqs] == [1, 2]
    assert seqs[2].status is SequenceStatus.WAITING


def test_preemption_frees_the_youngest_and_requeues_it_first():
    manager = BlockManager(num_blocks=4, block_size=BS)
    scheduler = Scheduler(manager, max_num_seqs=8, max_num_batched_tokens=100)
    old, young = seq(1, 8), seq(2, 7)  # 2 blocks each: the pool is full after the prefill
    scheduler.add(old)
    scheduler.add(young)
    advance(scheduler.schedule(), manager)
    assert manager.num_free_blocks == 0
    batch = scheduler.schedule()  # old's decode needs a third block: young must go
    assert batch.preempted == [young]
    assert [s.seq_id for s in batch.seqs] == [1]
    assert (
        young.status is SequenceStatus.WAITING and young.block_table == [] and young.num_computed_tokens == 0
    )
    assert scheduler.waiting[0] is young and young.num_preemptions == 1
    assert young.output_token_ids == [7]  # kept: recomputed later, not resampled


def test_siblings_wait_for_the_leader_then_share_its_prompt_blocks():
    manager = BlockManager(64, BS)
    scheduler = Scheduler(manager, max_num_seqs=8, max_num_batched_tokens=100)
    leader = seq(1, 10)
    sibling = seq(1, 10, leader=leader)
    other = seq(3, 2)
    for s in (leader, sibling, other):
        scheduler.add(s)
    batch = scheduler.schedule()
    assert [s.seq_id for s in batch.seqs] == [1, 3]  # the sibling waits, without blocking `other`
    advance(batch, manager)
    batch = scheduler.schedule()
    assert sibling in batch.seqs
    # Two full prompt blocks are shared; only the partial last block is the sibling's own.
    assert sibling.block_table[:2] == leader.block_table[:2]
    assert sibling.block_table[2] != leader.block_table[2]
    assert sibling.num_prefix_hit_blocks == 2
    assert [manager.blocks[b].ref_count for b in leader.block_table[:2]] == [2, 2]
