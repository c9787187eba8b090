"""KVCacheManager: exact block ids, prefix-cache hits and LRU eviction, and a hypothesis state machine
checking that blocks are never leaked or double-owned under any mix of operations."""

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from corral.engine.block_manager import KVCacheManager
from corral.engine.request import Request
from corral.sample.params import SamplingParams


def make_request(request_id: str, tokens: list[int]) -> Request:
    return Request(request_id, list(tokens), SamplingParams(max_tokens=100), max_model_len=10_000)


def admit(manager: KVCacheManager, request: Request) -> bool:
    blocks = manager.get_computed_blocks(request)
    num_computed = len(blocks) * manager.block_size
    if not manager.allocate_slots(request, request.num_tokens - num_computed, blocks):
        return False
    request.num_computed_tokens = request.num_tokens
    return True


def test_allocates_exact_block_ids_and_frees_them():
    manager = KVCacheManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    request = make_request("a", list(range(10)))
    assert admit(manager, request)
    assert manager.block_tables["a"] == [0, 1, 2]
    assert manager.num_free_blocks == 5
    manager.free(request)
    assert manager.num_free_blocks == 8


def test_refuses_without_side_effects_when_short():
    manager = KVCacheManager(num_blocks=2, block_size=4)
    request = make_request("a", list(range(12)))
    assert not admit(manager, request)
    assert manager.num_free_blocks == 2
    assert "a" not in manager.block_tables


def test_prefix_hit_reuses_blocks_and_leaves_one_token_to_compute():
    manager = KVCacheManager(num_blocks=16, block_size=4)
    first = make_request("a", list(range(12)))
    assert admit(manager, first)
    manager.free(first)
    second = make_request("b", list(range(12)))
    hit = manager.get_computed_blocks(second)
    # 12 tokens = 3 full blocks, but the last token must be computed to get logits: 2 blocks hit.
    assert hit == [0, 1]
    longer = make_request("c", list(range(12)) + [99, 98])
    assert manager.get_computed_blocks(longer) == [0, 1, 2]
    diverging = make_request("d", [0, 1, 2, 3, 7, 7, 7, 7, 8])
    assert manager.get_computed_blocks(diverging) == [0]


def test_cached_blocks_are_evicted_lru_and_lose_their_hash():
    """Only the least recently used cached blocks are evicted (a sequence's last block first) and lose their
    hash; the others stay hits. A prefix hit makes a prefix recent again, however early it was cached."""
    manager = KVCacheManager(num_blocks=8, block_size=2)
    prefixes = {"a": [1, 2, 3, 4], "b": [5, 6, 7, 8], "c": [9, 10, 11, 12]}  # two full blocks each
    for (name, tokens), blocks in zip(prefixes.items(), ([0, 1], [2, 3], [4, 5])):  # used and freed in turn
        request = make_request(name, tokens)
        assert admit(manager, request)
        assert manager.block_tables[name] == blocks
        manager.free(request)
    assert manager.num_free_blocks == 8 and len(manager.pool.cached) == 6
    # Reuse a (a hit on its two blocks, and block 6 filled and cached): a is now the most recently used.
    reuse = make_request("a-again", prefixes["a"] + [13, 14])
    assert manager.get_computed_blocks(reuse) == [0, 1]
    assert admit(manager, reuse)
    assert manager.block_tables["a-again"] == [0, 1, 6]
    manager.free(reuse)
    # Last use: b, then c, then a. Four blocks: the never-used block 7, then b's two, then c's last one.
    hashes = [manager.pool.block_hash[b] for b in range(7)]
    assert None not in hashes
    d = make_request("d", [20, 21, 22, 23, 24, 25, 26])
    assert admit(manager, d)
    assert manager.block_tables["d"] == [7, 3, 2, 5]
    still_cached = [manager.pool.cached.get(h) == b for b, h in enumerate(hashes)]
    assert still_cached == [True, True, False, False, True, False, True]
    probes = {name: make_request(f"{name}-probe", tokens + [99]) for name, tokens in prefixes.items()}
    probes["a-again"] = make_request("a-again-probe", prefixes["a"] + [13, 14, 99])
    hits = {name: manager.get_computed_blocks(request) for name, request in probes.items()}
    assert hits == {"a": [0, 1], "b": [], "c": [4], "a-again": [0, 1, 6]}


def test_stats_count_prompt_tokens_and_hits():
    manager = KVCacheManager(num_blocks=16, block_size=4)
    a = make_request("a", list(range(9)))
    assert admit(manager, a)
    manager.record_lookup(9, 0)
    b = make_request("b", list(range(9)))
    blocks = manager.get_computed_blocks(b)
    manager.record_lookup(b.num_tokens, len(blocks) * 4)
    assert (manager.stats.queries, manager.stats.hits) == (18, 8)


class BlockManagerMachine(RuleBasedStateMachine):
    """Random admissions, decode growth and frees; blocks must always add up."""

    def __init__(self):
        super().__init__()
        self.manager = KVCacheManager(num_blocks=12, block_size=4)
        self.live: dict[str, Request] = {}
        self.counter = 0

    @rule(
        prefix=st.sampled_from([[], [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8]]),
        tail=st.lists(st.integers(0, 5), min_size=1, max_size=14),
    )
    def admit_request(self, prefix, tail):
        self.counter += 1
        request = make_request(f"r{self.counter}", prefix + tail)
        if admit(self.manager, request):
            self.live[request.request_id] = request

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def decode_one(self, data):
        request = self.live[data.draw(st.sampled_from(sorted(self.live)))]
        if self.manager.allocate_slots(request, 1):
            request.append_token(3)
            request.num_computed_tokens += 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def finish(self, data):
        request = self.live.pop(data.draw(st.sampled_from(sorted(self.live))))
        self.manager.free(request)

    @invariant()
    def blocks_add_up(self):
        pool = self.manager.pool
        owned = [b for table in self.manager.block_tables.values() for b in table]
        # Every owned block's refcount equals how many tables hold it; free blocks have refcount 0.
        for block_id in range(pool.num_blocks):
            assert pool.ref_cnt[block_id] == owned.count(block_id)
        num_in_use = sum(1 for c in pool.ref_cnt if c > 0)
        assert num_in_use + self.manager.num_free_blocks == pool.num_blocks
        for request in self.live.values():
            table = self.manager.block_tables[request.request_id]
            assert len(table) == self.manager.num_blocks_for(request.num_computed_tokens)

    def teardown(self):
        for request in self.live.values():
            self.manager.free(request)
        assert self.manager.num_free_blocks == self.manager.num_blocks


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_occupancy_counts_empty_tail_slots_once_with_shared_prefix_blocks():
    manager = KVCacheManager(num_blocks=16, block_size=4)
    first = make_request("a", list(range(10)))  # blocks [0-3] [4-7] [8, 9, _, _]
    assert admit(manager, first)
    second = make_request("b", list(range(8)) + [50, 51, 52])  # shares two full blocks, then [50, 51, 52, _]
    assert admit(manager, second)
    manager.record_occupancy([first, second])
    # 4 blocks held (16 slots), 13 distinct tokens in them
    assert (manager.occupancy.allocated_slot_steps, manager.occupancy.empty_slot_steps) == (16, 3)
    manager.free(first)
    manager.record_occupancy([second])
    assert (manager.occupancy.allocated_slot_steps, manager.occupancy.empty_slot_steps) == (28, 4)
    assert manager.occupancy.waste == 4 / 28


def test_record_lookup_accumulates_over_calls():
    manager = KVCacheManager(num_blocks=4, block_size=4)
    manager.record_lookup(10, 4)
    manager.record_lookup(6, 2)
    assert (manager.stats.queries, manager.stats.hits) == (16, 6)


def test_freeing_a_request_without_blocks_is_a_no_op():
    manager = KVCacheManager(num_blocks=2, block_size=4)
    refused = make_request("a", list(range(12)))
    assert not admit(manager, refused)
    manager.free(refused)
    assert manager.num_free_blocks == 2 and manager.block_tables == {}


def test_blocks_filled_over_several_steps_are_all_cached():
    """Hashes computed a few blocks per call chain on: two prefill chunks, then a decode that fills a block."""
    manager = KVCacheManager(num_blocks=16, block_size=2)
    first = make_request("a", [1, 2, 3, 4, 5, 6, 7])
    assert manager.get_computed_blocks(first) == []
    assert manager.allocate_slots(first, 4)
    first.num_computed_tokens = 4
    assert manager.allocate_slots(first, 3)
    first.num_computed_tokens = 7
    first.append_token(8)
    assert manager.allocate_slots(first, 1)
    first.num_computed_tokens = 8
    assert manager.block_tables["a"] == [0, 1, 2, 3]
    second = make_request("b", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert manager.get_computed_blocks(second) == [0, 1, 2, 3]


def test_a_block_is_only_a_hit_after_the_same_prefix():
    manager = KVCacheManager(num_blocks=16, block_size=2)
    for name, tokens in (("xq", [1, 2, 3, 4]), ("wy", [5, 6, 7, 8])):  # blocks [0, 1] and [2, 3]
        assert admit(manager, make_request(name, tokens))
    # Block [7, 8] is cached, but after [5, 6], not [1, 2]: only the first block is a hit.
    assert manager.get_computed_blocks(make_request("xy", [1, 2, 7, 8, 9])) == [0]


def _pool_with_two_cached_free_blocks(num_filler_blocks: int) -> KVCacheManager:
    """8 blocks of 2: blocks 0 and 1 hold the cached, free prefix [1, 2, 3, 4]; a filler request holds
    ``num_filler_blocks`` others."""
    manager = KVCacheManager(num_blocks=8, block_size=2)
    first = make_request("a", [1, 2, 3, 4, 5])
    assert admit(manager, first)
    manager.free(first)
    filler = make_request("filler", list(range(100, 100 + 2 * num_filler_blocks)))
    assert admit(manager, filler)
    assert manager.num_free_blocks == 8 - num_filler_blocks
    return manager


def test_reviving_cached_free_blocks_needs_free_room_for_them():
    # The hit on blocks 0 and 1 takes them out of the free queue, and 3 more tokens need 2 new blocks: 4 in all.
    manager = _pool_with_two_cached_free_blocks(num_filler_blocks=4)
    request = make_request("b", [1, 2, 3, 4, 5, 6, 7])
    blocks = manager.get_computed_blocks(request)
    assert blocks == [0, 1]
    assert manager.allocate_slots(request, 3, blocks)
    assert manager.block_tables["b"] == [0, 1, 7, 2]  # the new ones from the free queue's head
    assert manager.num_free_blocks == 0

    short = _pool_with_two_cached_free_blocks(num_filler_blocks=5)
    request = make_request("b", [1, 2, 3, 4, 5, 6, 7])
    blocks = short.get_computed_blocks(request)
    assert blocks == [0, 1]
    assert not short.allocate_slots(request, 3, blocks)
    assert short.num_free_blocks == 3 and "b" not in short.block_tables
    assert short.get_computed_blocks(make_request("c", [1, 2, 3, 4, 5])) == [0, 1]


def test_a_reused_request_id_starts_with_no_state():
    """A finished request's id may come back with another prompt: no old hashes, and its blocks get cached."""
    manager = KVCacheManager(num_blocks=16, block_size=2)
    old = make_request("a", [1, 2, 3, 4, 5])
    assert admit(manager, old)
    manager.free(old)
    new = make_request("a", [6, 7, 8, 9, 10])
    assert manager.get_computed_blocks(new) == []
    assert admit(manager, new)
    assert manager.block_tables["a"] == [3, 4, 5]
    assert manager.get_computed_blocks(make_request("c", [6, 7, 8, 9, 10])) == [3, 4]


def _run_spec_step(manager: KVCacheManager, request: Request, num_drafts: int, num_accepted: int) -> None:
    """One decode step with drafts, as the scheduler runs it: the sampled token, then the rollback."""
    request.append_token(50)
    assert manager.allocate_slots(request, 1 + num_drafts)
    request.num_computed_tokens += 1 + num_accepted
    manager.truncate(request)


def test_truncate_returns_blocks_past_the_computed_tokens_last_first():
    manager = KVCacheManager(num_blocks=4, block_size=4)
    request = make_request("a", [10, 11, 12, 13, 14])
    assert admit(manager, request)
    # 5 computed + 1 sampled + 9 drafts = 15 tokens: 4 blocks; 1 draft accepted keeps 7 tokens, 2 blocks.
    _run_spec_step(manager, request, num_drafts=9, num_accepted=1)
    assert manager.block_tables["a"] == [0, 1]
    assert manager.num_free_blocks == 2
    # The free queue holds only the released blocks, the request's last one first.
    other = make_request("b", list(range(8)))
    assert manager.allocate_slots(other, 8)
    assert manager.block_tables["b"] == [3, 2]


def test_truncate_keeps_registered_blocks_and_never_releases_them():
    manager = KVCacheManager(num_blocks=4, block_size=4)
    request = make_request("a", [10, 11, 12, 13, 14, 15, 16])
    assert admit(manager, request)
    # The sampled token fills block 1, which is registered; all 4 drafts rejected: 8 computed tokens, 2 blocks.
    _run_spec_step(manager, request, num_drafts=4, num_accepted=0)
    assert request.num_computed_tokens == 8
    assert manager.block_tables["a"] == [0, 1]
    assert manager.num_free_blocks == 2
    request.num_computed_tokens = 4
    with pytest.raises(AssertionError, match="^a cached block would be released$"):
        manager.truncate(request)
    assert manager.block_tables["a"] == [0, 1] and manager.num_free_blocks == 2


def test_truncate_without_prefix_caching():
    manager = KVCacheManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    request = make_request("a", [10, 11])
    assert admit(manager, request)
    _run_spec_step(manager, request, num_drafts=5, num_accepted=0)  # 8 tokens scheduled, 3 computed
    assert manager.block_tables["a"] == [0]
    assert manager.num_free_blocks == 3
    request.num_computed_tokens = 0  # nothing computed: every block goes back
    manager.truncate(request)
    assert manager.block_tables["a"] == [] and manager.num_free_blocks == 4
