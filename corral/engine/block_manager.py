"""KV block accounting with automatic prefix caching. Plain Python, no torch.

Every full block of a sequence is keyed by a hash chain (parent block hash + the block's token
ids). A block whose last owner finished keeps its hash and stays reusable until the pool needs
it back; free blocks are handed out least-recently-freed first, which evicts cached blocks LRU.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from corral.engine.request import Request


def hash_block(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """Hash of a full block, chained to the block before it so equal hashes mean equal prefixes."""
    return hash((parent_hash, tuple(token_ids)))


@dataclass
class PrefixCacheStats:
    """Prompt tokens looked up in the prefix cache, and how many of them were found there."""

    queries: int = 0
    hits: int = 0


@dataclass
class SlotOccupancy:
    """KV slots in blocks held by live requests, summed over engine steps, and how many held no token
    (the tail of each request's last block). ``waste`` is the run's time-weighted fraction of empty slots."""

    allocated_slot_steps: int = 0
    empty_slot_steps: int = 0

    @property
    def waste(self) -> float:
        return self.empty_slot_steps / self.allocated_slot_steps if self.allocated_slot_steps else 0.0


class BlockPool:
    """Reference counts, the free queue (LRU order) and the hash -> block map."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.ref_cnt = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def allocate(self, num_blocks: int) -> list[int]:
        assert num_blocks <= len(self._free), "caller must check num_free_blocks first"
        blocks = []
        for _ in range(num_blocks):
            block_id, _ = self._free.popitem(last=False)
            self._evict(block_id)
            self.ref_cnt[block_id] = 1
            blocks.append(block_id)
        return blocks

    def touch(self, block_ids: Sequence[int]) -> None:
        """Take a reference on cached blocks (pulling free ones out of the free queue)."""
        for block_id in block_ids:
            if self.ref_cnt[block_id] == 0:
                del self._free[block_id]
            self.ref_cnt[block_id] += 1

    def release(self, block_ids: Sequence[int]) -> None:
        """Drop a reference; blocks reaching zero join the free queue's tail (evicted last)."""
        for block_id in block_ids:
            self.ref_cnt[block_id] -= 1
            assert self.ref_cnt[block_id] >= 0, f"block {block_id} released twice"
            if self.ref_cnt[block_id] == 0:
                self._free[block_id] = None

    def register(self, block_id: int, block_hash: int) -> None:
        if block_hash not in self.cached:
            self.cached[block_hash] = block_id
            self.block_hash[block_id] = block_hash

    def _evict(self, block_id: int) -> None:
        block_hash = self.block_hash[block_id]
        if block_hash is not None:
            self.block_hash[block_id] = None
            if self.cached.get(block_hash) == block_id:
                del self.cached[block_hash]


class KVCacheManager:
    """Owns every request's block table; the scheduler asks it for room before scheduling tokens."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks)
        self.block_tables: dict[str, list[int]] = {}
        self._block_hashes: dict[str, list[int]] = {}
        self._num_registered: dict[str, int] = {}
        self.stats = PrefixCacheStats()
        self.occupancy = SlotOccupancy()

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live requests (cached free blocks count as free)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, request: Request) -> list[int]:
        """Blocks of the request's longest cached prefix, leaving at least one token to compute."""
        if not self.enable_prefix_caching:
            return []
        hashes = self._update_hashes(request)
        max_blocks = (request.num_tokens - 1) // self.block_size
        blocks = []
        for block_hash in hashes[:max_blocks]:
            block_id = self.pool.cached.get(block_hash)
            if block_id is None:
                break
            blocks.append(block_id)
        return blocks

    def allocate_slots(
        self, request: Request, num_new_tokens: int, computed_blocks: Sequence[int] = ()
    ) -> bool:
        """Make room for ``num_new_tokens`` after the request's computed tokens (and ``computed_blocks``,
        a prefix-cache hit for a request being admitted). False, changing nothing, if the pool is short."""
        table = self.block_tables.setdefault(request.request_id, [])
        num_computed = request.num_computed_tokens + len(computed_blocks) * self.block_size
        num_needed = self.num_blocks_for(num_computed + num_new_tokens) - len(table) - len(computed_blocks)
        num_revived = sum(1 for b in computed_blocks if self.pool.ref_cnt[b] == 0)
        if num_needed + num_revived > self.pool.num_free_blocks:
            if not table:
                del self.block_tables[request.request_id]
            return False
        if computed_blocks:
            self.pool.touch(computed_blocks)
            table.extend(computed_blocks)
            self._num_registered[request.request_id] = len(table)
        if num_needed > 0:
            table.extend(self.pool.allocate(num_needed))
        if self.enable_prefix_caching:
            self._register_full_blocks(request, num_computed + num_new_tokens)
        return True

    def record_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        self.stats.queries += num_query_tokens
        self.stats.hits += num_hit_tokens

    def record_occupancy(self, live_requests: Sequence[Request]) -> None:
        """Add this step's allocated and empty slots to ``occupancy``; call once per step, after the
        requests' computed-token counts are updated. Shared prefix blocks are full, so counting them
        once per owner leaves the empty count exact."""
        num_allocated = (self.num_blocks - self.num_free_blocks) * self.block_size
        num_empty = sum(
            len(self.block_tables[r.request_id]) * self.block_size - r.num_computed_tokens
            for r in live_requests
            if r.request_id in self.block_tables
        )
        self.occupancy.allocated_slot_steps += num_allocated
        self.occupancy.empty_slot_steps += num_empty

    def truncate(self, request: Request) -> None:
        """Release the blocks past the request's computed tokens (those that held only rejected drafts). They
        were never registered in the prefix cache: only blocks full of the request's known tokens are."""
        table = self.block_tables[request.request_id]
        num_kept = self.num_blocks_for(request.num_computed_tokens)
        assert num_kept >= self._num_registered.get(request.request_id, 0), "a cached block would be released"
        if len(table) > num_kept:
            self.pool.release(table[num_kept:][::-1])
            del table[num_kept:]

    def free(self, request: Request) -> None:
        """Release the request's blocks, tail first, so a sequence's last blocks are evicted first."""
        table = self.block_tables.pop(request.request_id, [])
        self.pool.release(table[::-1])
        self._num_registered.pop(request.request_id, None)
        self._block_hashes.pop(request.request_id, None)

    def _register_full_blocks(self, request: Request, num_tokens_after_step: int) -> None:
        # Blocks become cache entries once scheduled in full: their K/V is written this step, before
        # any attention reads it, so a request admitted later in the same step may already share them.
        hashes = self._update_hashes(request)
        table = self.block_tables[request.request_id]
        start = self._num_registered.get(request.request_id, 0)
        end = min(num_tokens_after_step // self.block_size, len(hashes))
        for i in range(start, end):
            self.pool.register(table[i], hashes[i])
        self._num_registered[request.request_id] = max(start, end)

    def _update_hashes(self, request: Request) -> list[int]:
        hashes = self._block_hashes.setdefault(request.request_id, [])
        num_full = request.num_tokens // self.block_size
        tokens = request.all_token_ids
        bs = self.block_size
        for i in range(len(hashes), num_full):
            hashes.append(hash_block(hashes[-1] if hashes else None, tokens[i * bs : (i + 1) * bs]))
        return hashes
