"""BlockManager: ref counts, prefix reuse by hash chain, LRU eviction, copy-on-write."""

from __future__ import annotations

from llmserve.llm.block_manager import BlockManager
from llmserve.llm.request import Request
from llmserve.llm.sampling import SamplingParams
from llmserve.llm.sequence import RequestState, Sequence
from llmserve.llm.stop import StopCriteria


def make_seq(tokens: list[int], rid: int = 1) -> Sequence:
    req = Request(list(tokens), max_tokens=4)
    return RequestState(rid, req, SamplingParams(), StopCriteria(4), 1).seqs[0]


def prefill(bm: BlockManager, seq: Sequence) -> None:
    """Allocate and 'compute' the whole prompt, using the prefix cache."""
    computed = bm.computed_blocks(seq)
    assert bm.allocate_slots(seq, len(seq.token_ids) - len(computed) * bm.block_size,
                             computed) == []
    seq.num_computed = len(seq.token_ids)
    bm.cache_full_blocks(seq)


def test_allocate_and_free_restores_free_count():
    bm = BlockManager(8, 4)
    seq = make_seq(list(range(10)))
    assert bm.allocate_slots(seq, 10) == []
    assert len(seq.block_table) == 3 and bm.num_free_blocks == 5
    assert all(bm.blocks[b].ref_count == 1 for b in seq.block_table)
    seq.num_computed = 10
    seq.token_ids.append(99)
    assert bm.allocate_slots(seq, 1) == []  # 11 tokens still fit in 3 blocks
    assert len(seq.block_table) == 3
    bm.free(seq)
    assert bm.num_free_blocks == 8 and seq.block_table == []
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_allocation_failure_changes_nothing():
    bm = BlockManager(2, 4)
    seq = make_seq(list(range(12)))
    assert bm.allocate_slots(seq, 12) is None
    assert bm.num_free_blocks == 2 and seq.block_table == []


def test_prefix_reuse_by_hash_chain():
    bm = BlockManager(16, 4, enable_reuse=True)
    a = make_seq(list(range(14)), 1)
    prefill(bm, a)
    assert bm.num_cached_blocks == 3  # 3 full blocks of 4
    bm.free(a)
    assert bm.num_free_blocks == 16  # cached blocks are free, still reusable
    b = make_seq(list(range(12)) + [50, 51], 2)
    computed = bm.computed_blocks(b)
    assert len(computed) == 3
    prefill(bm, b)
    assert b.num_reused_blocks == 3 and b.num_new_blocks == 1 and b.num_missed_blocks == 0
    # a different block in the middle breaks the chain after it
    c = make_seq([0, 1, 2, 3, 9, 9, 9, 9, 8, 9, 10, 11, 12], 3)
    assert bm.computed_blocks(c) == computed[:1]
    # the whole prompt cached: the last block is recomputed so one token runs
    d = make_seq(list(range(12)), 4)
    assert len(bm.computed_blocks(d)) == 2
    bm.free(b)
    assert bm.num_free_blocks == 16


def test_extra_keys_separate_lora_tasks():
    bm = BlockManager(16, 4, enable_reuse=True)
    a = make_seq(list(range(9)))
    computed = bm.computed_blocks(a)
    bm.allocate_slots(a, 9, computed)
    a.num_computed = 9
    bm.cache_full_blocks(a, extra=(7,))
    b = make_seq(list(range(9)), 2)
    assert bm.computed_blocks(b, extra=(7,)) != []
    assert bm.computed_blocks(b, extra=(8,)) == []
    assert bm.computed_blocks(b) == []


def test_lru_eviction_keeps_most_recently_freed_prefix():
    bm = BlockManager(6, 4, enable_reuse=True)
    old = make_seq([1] * 8 + [0], 1)
    prefill(bm, old)
    bm.free(old)
    new = make_seq([2] * 8 + [0], 2)
    prefill(bm, new)
    bm.free(new)
    assert bm.num_cached_blocks == 4
    # three blocks needed: the two never-cached ones, then the least recently freed
    # cached block (frees go tail first, so `old`'s second block is the first victim)
    filler = make_seq([3] * 10, 3)
    assert bm.allocate_slots(filler, 10) == []
    assert bm.num_cached_blocks == 3
    assert len(bm.computed_blocks(make_seq([2] * 8 + [5], 4))) == 2
    assert len(bm.computed_blocks(make_seq([1] * 8 + [5], 5))) == 1
    bm.free(filler)
    assert bm.num_free_blocks == 6


def test_unhashed_blocks_are_handed_out_before_cached_ones():
    bm = BlockManager(4, 4, enable_reuse=True)
    cached = make_seq([1] * 8 + [0], 1)
    prefill(bm, cached)  # 2 full cached blocks + 1 partial (unhashed)
    bm.free(cached)
    other = make_seq([7, 7], 2)
    bm.allocate_slots(other, 2)
    assert bm.num_cached_blocks == 2  # took the never-cached block, not a prefix block


def test_fork_shares_blocks_and_copies_partial_block_on_write():
    bm = BlockManager(8, 4)
    parent = make_seq(list(range(6)))
    bm.allocate_slots(parent, 6)
    parent.num_computed = 6
    child = Sequence(parent.state, 1, list(parent.token_ids), 6)
    bm.fork(parent, child)
    assert all(bm.blocks[b].ref_count == 2 for b in parent.block_table)
    assert bm.num_free_blocks == 6
    parent.token_ids.append(40)
    child.token_ids.append(41)
    copies = bm.allocate_slots(child, 1)
    assert len(copies) == 1 and copies[0][0] == parent.block_table[1]
    assert child.block_table[0] == parent.block_table[0]
    assert child.block_table[1] == copies[0][1]
    assert bm.allocate_slots(parent, 1) == []  # now the sole owner: writes in place
    bm.free(parent)
    bm.free(child)
    assert bm.num_free_blocks == 8


def test_a_sequence_gets_its_blocks_in_ascending_order():
    """Frees go tail first, so a freed sequence's blocks sit in the queue in descending
    order; the next sequence to take them gets them ascending (the CPU decode kernel
    reads adjacent blocks as one stream)."""
    bm = BlockManager(8, 4, enable_reuse=True)
    first = make_seq(list(range(16)), 1)
    prefill(bm, first)
    assert first.block_table == [0, 1, 2, 3]
    bm.free(first)  # all four full and cached: queued as 4, ... behind 3, 2, 1, 0 order
    filler = make_seq([9] * 16, 2)
    assert bm.allocate_slots(filler, 16) == []  # the four never-used blocks
    assert filler.block_table == [4, 5, 6, 7]
    second = make_seq([8] * 16, 3)
    assert bm.allocate_slots(second, 16) == []  # evicts first's four, newest last
    assert second.block_table == [0, 1, 2, 3]


def test_a_growing_sequence_takes_the_block_after_its_last():
    bm = BlockManager(8, 4)
    a, b, c = (make_seq(list(range(4)), rid) for rid in (1, 2, 3))
    for seq in (a, b, c):
        assert bm.allocate_slots(seq, 4) == []
        seq.num_computed = 4
    assert [s.block_table for s in (a, b, c)] == [[0], [1], [2]]
    bm.free(b)
    bm.free(c)  # the queue's front: 2, then 1
    a.token_ids.append(5)
    assert bm.allocate_slots(a, 1) == []
    assert a.block_table == [0, 1]
    d = make_seq(list(range(8)), 4)
    assert bm.allocate_slots(d, 8) == []
    assert d.block_table == [2, 3]


def test_a_cached_block_leaves_eviction_order_only_while_half_the_pool_is_free():
    bm = BlockManager(8, 4, enable_reuse=True)
    grower = make_seq(list(range(4)), 1)
    prefill(bm, grower)  # block 0
    cached = make_seq([7] * 4 + [1], 2)
    prefill(bm, cached)  # blocks 1 (full, cached) and 2
    bm.free(cached)  # 2 unhashed to the front, 1 cached at the back
    hog = make_seq([5] * 16, 3)
    assert bm.allocate_slots(hog, 16) == []  # 2, 3, 4, 5: 3 blocks left free
    grower.token_ids.append(5)
    assert bm.allocate_slots(grower, 1) == []
    assert grower.block_table == [0, 6]  # not 1: its prefix stays cached
    assert bm.num_cached_blocks == 2  # grower's block 0 and cached's block 1

    roomy = BlockManager(8, 4, enable_reuse=True)
    grower = make_seq(list(range(4)), 1)
    prefill(roomy, grower)
    cached = make_seq([7] * 4 + [1], 2)
    prefill(roomy, cached)
    roomy.free(cached)  # 7 of 8 free
    grower.token_ids.append(5)
    assert roomy.allocate_slots(grower, 1) == []
    assert grower.block_table == [0, 1]  # adjacent, its cached prefix evicted
    assert roomy.num_cached_blocks == 1
