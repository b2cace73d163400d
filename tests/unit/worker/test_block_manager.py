"""BlockManager bookkeeping: refcounts, the version-keyed prefix cache, LRU reuse."""

import pytest

from epochserve.errors import CapacityError
from epochserve.sampling import SamplingParams
from epochserve.worker.engine.block_manager import BlockManager
from epochserve.worker.engine.sequence import Sequence

BS = 4


def seq(tokens, version=0, seq_id=0):
    return Sequence(
        seq_id=seq_id,
        request_id=f"r{seq_id}",
        sample_index=0,
        prompt_token_ids=list(tokens),
        sampling=SamplingParams(),
        max_tokens=8,
        seed=0,
        policy_version=version,
    )


def compute_all(manager, s):
    """What the engine does around a step: allocate, compute every token, index the full blocks."""
    manager.admit(s)
    manager.allocate(s, s.num_uncomputed_tokens)
    s.num_computed_tokens = s.num_tokens
    manager.register_computed(s)


def test_allocate_and_free_return_every_block():
    manager = BlockManager(num_blocks=8, block_size=BS)
    s = seq(range(10))
    manager.allocate(s, 10)
    assert len(s.block_table) == 3  # ceil(10 / 4): waste is at most one partial block
    assert manager.num_free_blocks == 5
    manager.free(s)
    assert manager.num_free_blocks == 8 and s.block_table == []


def test_allocate_refuses_beyond_the_pool():
    manager = BlockManager(num_blocks=2, block_size=BS)
    with pytest.raises(CapacityError):
        manager.allocate(seq(range(9)), 9)
    assert manager.num_free_blocks == 2


def test_repeated_prompt_hits_full_blocks_but_recomputes_the_last():
    manager = BlockManager(num_blocks=16, block_size=BS)
    first = seq(range(12), seq_id=1)  # exactly 3 full blocks
    compute_all(manager, first)
    second = seq(range(12), seq_id=2)
    hits = manager.admit(second)
    # The last block is never reused: the step must compute at least one token for the logits.
    assert hits == 2 and second.num_computed_tokens == 8
    assert second.block_table == first.block_table[:2]
    assert [manager.blocks[b].ref_count for b in first.block_table] == [2, 2, 1]
    assert manager.usage().prefix_cache_hits == 2


def test_cache_hits_survive_free_until_the_block_is_reused():
    manager = BlockManager(num_blocks=4, block_size=BS)
    first = seq(range(9), seq_id=1)
    compute_all(manager, first)
    manager.free(first)
    again = seq(range(9), seq_id=2)
    assert manager.admit(again) == 2
    manager.free(again)
    # Fill the pool with other tokens: the cached blocks are evicted and forgotten.
    other = seq(range(100, 116), seq_id=3)
    manager.allocate(other, 16)
    manager.free(other)
    assert manager.admit(seq(range(9), seq_id=4)) == 0


def test_prefix_cache_is_keyed_by_policy_version():
    manager = BlockManager(num_blocks=16, block_size=BS)
    compute_all(manager, seq(range(9), version=0, seq_id=1))
    assert manager.usage().num_cached == 2
    dropped = manager.set_policy_version(1)
    assert dropped == 2 and manager.usage().num_cached == 0
    fresh = seq(range(9), version=1, seq_id=2)
    assert manager.admit(fresh) == 0


def test_blocks_of_a_dropped_version_are_reused_under_the_new_one():
    # The commit drops the old version's index whole; its blocks keep their stale keys until reused.
    manager = BlockManager(num_blocks=4, block_size=BS)
    old = seq(range(9), version=0, seq_id=1)
    compute_all(manager, old)
    manager.free(old)
    manager.set_policy_version(1)
    # Fill the pool under v1 with the same tokens: the stale blocks are reused and indexed again.
    new = seq(range(9), version=1, seq_id=2)
    compute_all(manager, new)
    manager.free(new)
    assert manager.usage().num_cached == 2
    assert all(manager.blocks[b].cache_key[0] == 1 for b in new.block_table[:2])
    assert manager.admit(seq(range(9), version=1, seq_id=3)) == 2


def test_a_sequence_of_another_version_never_fills_the_cache():
    manager = BlockManager(num_blocks=16, block_size=BS)
    manager.set_policy_version(3)
    compute_all(manager, seq(range(9), version=2, seq_id=1))
    assert manager.usage().num_cached == 0


def test_different_prefixes_do_not_collide():
    manager = BlockManager(num_blocks=16, block_size=BS)
    compute_all(manager, seq([1, 2, 3, 4, 5, 6, 7, 8, 9], seq_id=1))
    # Same second block, different first block: the chained hash must miss both.
    assert manager.admit(seq([9, 9, 9, 9, 5, 6, 7, 8, 9], seq_id=2)) == 0


def test_prefix_cache_can_be_disabled():
    manager = BlockManager(num_blocks=16, block_size=BS, enable_prefix_cache=False)
    compute_all(manager, seq(range(9), seq_id=1))
    assert manager.admit(seq(range(9), seq_id=2)) == 0
    assert manager.usage().num_cached == 0
