"""BlockManager: the paged KV pool's bookkeeping and the version-keyed prefix cache.

Pure CPU bookkeeping: never touches tensors, so it tests in milliseconds.

Blocks hold `block_size` token positions. A sequence's block_table lists its blocks in order.
Blocks are reference-counted: the `n` samples of a request, and requests with a common prefix,
share full prompt blocks. A full block whose keys/values are computed is indexed by the prefix
cache under (policy_version, hash of every token up to the end of the block). The version in the
key means that blocks computed under weights v-1 can never be hit under v (docs/design.md §1): a prefix
cache that outlived a weight update was one of the 2026 post-mortem's silent mismatches.

Free blocks (refcount 0) stay indexed until they are reused, least recently freed first, so a
repeated prompt can hit blocks nobody holds any more. The index is one table per version: a new
version drops the others' tables whole, at once (a rollout's commit waits for nothing per block;
the blocks keep their stale keys until they are reused).

Routing replay (MoE models): a cached block also keeps the routing of its positions (`Block.routing`,
host memory, [block_size, moe layers, top_k] small ints), given by the first sequence that logged it
(routing.py) and dropped with the cache entry. A sequence that asks for routing only hits blocks
that carry it (or whose positions it logged already), so a hit returns the routing that computed
those keys/values, exactly as if it had computed them itself.

Every sequence that holds blocks also holds a table row (`seq.table_row`, the smallest free one):
the decode graphs keep each sequence's block table in that row of a device tensor and receive only
the blocks added since the last step (cuda_graphs.py). At most 2 * max_num_seqs + 1 sequences hold
blocks at once (the running ones, of two versions during a drain=overlap, and the one being
admitted).
"""

from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np

from epochserve.errors import CapacityError
from epochserve.worker.engine.sequence import Sequence

CacheKey = tuple[int, bytes]  # (policy_version, chained block hash)
_NO_TABLE: dict[bytes, int] = {}  # the index of a version nothing is cached under (never written)


def chain_hash(parent: bytes, token_ids: Seq[int]) -> bytes:
    """Hash of a block's tokens chained to the hash of everything before it (128-bit blake2b)."""
    data = parent + np.asarray(token_ids, dtype=np.int64).tobytes()
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    cache_key: CacheKey | None = None  # set once the block is full and computed
    routing: np.ndarray | None = None  # routing replay: its positions' expert ids, while indexed


@dataclass(frozen=True, slots=True)
class BlockUsage:
    block_size: int
    num_total: int
    num_free: int  # refcount 0 (cached-but-free blocks included)
    num_cached: int  # indexed by the prefix cache
    prefix_cache_queries: int  # prompt blocks looked up since start
    prefix_cache_hits: int


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"need at least one block of at least one token, got {num_blocks} x {block_size}"
            )
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.policy_version = 0
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # LRU order
        self._cached: dict[int, dict[bytes, int]] = {}  # policy version → block hash → block id
        self._free_rows: list[int] = []  # a heap: the lowest free row first
        self._num_rows = 0  # rows ever handed out
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0

    # ---- queries -------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def usage(self) -> BlockUsage:
        return BlockUsage(
            self.block_size,
            len(self.blocks),
            len(self._free),
            sum(len(table) for table in self._cached.values()),
            self.prefix_cache_queries,
            self.prefix_cache_hits,
        )

    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Blocks to add so that seq can hold num_computed + num_new_tokens positions."""
        total = -(-(seq.num_computed_tokens + num_new_tokens) // self.block_size)
        return max(0, total - len(seq.block_table))

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= len(self._free)

    # ---- allocation ----------------------------------------------------------------------
    def admit(self, seq: Sequence) -> int:
        """First allocation of a waiting sequence: reuse its cached prefix blocks; returns their number.

        At least one token is always left to compute, since the step must produce logits; a fully
        cached prompt therefore recomputes its last block into a fresh block (never writing into a
        shared one).
        """
        assert not seq.block_table and seq.num_computed_tokens == 0, "admit() takes a sequence without blocks"
        if not self.enable_prefix_cache or seq.must_score_prompt():
            return 0
        max_hit_blocks = (seq.num_tokens - 1) // self.block_size
        # The sequence's own version: under drain=overlap two versions admit sequences at once.
        table = self._cached.get(seq.policy_version, _NO_TABLE)
        for index, block_hash in enumerate(self._block_hashes(seq, max_hit_blocks)):
            self.prefix_cache_queries += 1
            block_id = table.get(block_hash)
            if block_id is None or not self._routing_known(seq, index, self.blocks[block_id]):
                break
            self.prefix_cache_hits += 1
            self._take(block_id)
            seq.block_table.append(block_id)
        if seq.block_table:
            self._give_row(seq)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        if seq.routing is not None:
            self._replay_routing(seq)
        return len(seq.block_table)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Give seq the blocks it needs to compute num_new_tokens more tokens; CapacityError if short."""
        needed = self.num_blocks_needed(seq, num_new_tokens)
        if needed > len(self._free):
            raise CapacityError(f"need {needed} KV blocks, {len(self._free)} free")
        for _ in range(needed):
            block_id = next(iter(self._free))
            self._evict(block_id)
            self._take(block_id)
            seq.block_table.append(block_id)
        if needed and seq.table_row is None:
            self._give_row(seq)

    def free(self, seq: Sequence) -> None:
        """Drop seq's references (most recent block first, so a prompt's head stays cached longest)."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed more often than taken"
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0
        seq.num_indexed_blocks = 0
        seq.num_routed_blocks = 0
        if seq.table_row is not None:
            heapq.heappush(self._free_rows, seq.table_row)
            seq.table_row = None
            seq.num_synced_blocks = 0

    def register_computed(self, seq: Sequence) -> None:
        """Index seq's full blocks whose keys/values are now computed, under the current version.
        Each block is offered once: if an identical block is already cached, that one stays."""
        if not self.enable_prefix_cache or seq.policy_version != self.policy_version:
            return
        num_full = seq.num_computed_tokens // self.block_size
        if num_full > seq.num_indexed_blocks:
            hashes = self._block_hashes(seq, num_full)
            table = self._cached.setdefault(self.policy_version, {})
            for index in range(seq.num_indexed_blocks, num_full):
                block = self.blocks[seq.block_table[index]]
                if block.cache_key is None and hashes[index] not in table:
                    block.cache_key = (self.policy_version, hashes[index])
                    table[hashes[index]] = block.block_id
            seq.num_indexed_blocks = num_full
        if seq.routing is not None:
            self._store_routing(seq)

    def set_policy_version(self, version: int) -> int:
        """Serve `version` from now on: forget every cached block of other versions. Returns how many.
        Their tables go whole; each block forgets its key (and routing) when it is reused (_evict),
        so a block holds at most one routing either way."""
        self.policy_version = version
        stale = [v for v in self._cached if v != version]
        return sum(len(self._cached.pop(v)) for v in stale)

    # ---- internals -----------------------------------------------------------------------
    def _block_hashes(self, seq: Sequence, num_blocks: int) -> list[bytes]:
        """Chained hashes of seq's first num_blocks full blocks, extending seq.block_hashes."""
        hashes = seq.block_hashes
        if len(hashes) < num_blocks:
            size = self.block_size
            for index in range(len(hashes), num_blocks):
                parent = hashes[-1] if hashes else b""
                hashes.append(chain_hash(parent, seq.tokens_between(index * size, (index + 1) * size)))
        return hashes[:num_blocks]

    def _routing_known(self, seq: Sequence, index: int, block: Block) -> bool:
        """Whether a hit on `block` as seq's block `index` leaves seq's routing complete: it needs
        none, the block carries it, or seq logged those positions before (a preempted sequence)."""
        if seq.routing is None or block.routing is not None:
            return True
        return seq.routing.length >= (index + 1) * self.block_size

    def _replay_routing(self, seq: Sequence) -> None:
        """Log the routing of the prefix blocks seq just hit (the positions it has not logged)."""
        assert seq.routing is not None
        size = self.block_size
        for index, block_id in enumerate(seq.block_table):
            routing = self.blocks[block_id].routing
            if routing is not None and seq.routing.length < (index + 1) * size:
                seq.routing.extend(index * size, routing)

    def _store_routing(self, seq: Sequence) -> None:
        """Give the cache entries of seq's indexed blocks the routing seq logged for them, where
        they have none yet. A block's last position may be logged a step after it was indexed (a
        run-ahead step), hence the separate count."""
        assert seq.routing is not None
        size = self.block_size
        ready = min(seq.num_indexed_blocks, seq.routing.length // size)
        for index in range(seq.num_routed_blocks, ready):
            block_id = self._cached.get(seq.policy_version, _NO_TABLE).get(seq.block_hashes[index])
            if block_id is not None and self.blocks[block_id].routing is None:
                # a copy: a view would keep the sequence's whole log alive with the block
                self.blocks[block_id].routing = seq.routing.rows(index * size, (index + 1) * size).copy()
        seq.num_routed_blocks = max(seq.num_routed_blocks, ready)

    def _give_row(self, seq: Sequence) -> None:
        if self._free_rows:
            seq.table_row = heapq.heappop(self._free_rows)
        else:
            seq.table_row = self._num_rows
            self._num_rows += 1

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        """Forget the cached contents of a free block that is about to be overwritten."""
        block = self.blocks[block_id]
        if block.cache_key is not None:
            version, block_hash = block.cache_key
            table = self._cached.get(version, _NO_TABLE)
            if table.get(block_hash) == block_id:  # else its version's table was dropped
                del table[block_hash]
            block.cache_key, block.routing = None, None
