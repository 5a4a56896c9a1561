"""Block manager: free list, reference counts, prefix sharing (plain Python, no model)."""
import pytest

from tutx.engine.block_manager import BlockManager
from tutx.engine.sequence import Sequence


def seq(n, start=100):
    return Sequence(list(range(start, start + n)))


def test_allocate_append_free_returns_every_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(9)  # 3 blocks: 4 + 4 + 1
    assert bm.can_allocate(s)
    bm.allocate(s)
    assert len(s.block_table) == 3 and len(set(s.block_table)) == 3
    assert bm.num_free_blocks == 5 and s.num_cached_tokens == 0
    for t in range(3):  # positions 9, 10, 11 fit the third block
        s.append_token(t)
        assert bm.can_append(s)
        bm.append_slot(s)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    s.append_token(7)  # position 12 opens a fourth block
    bm.append_slot(s)
    assert len(s.block_table) == 4 and bm.num_free_blocks == 4
    bm.free(s)
    assert s.block_table == [] and bm.num_free_blocks == 8
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_can_allocate_and_can_append_false_when_full():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = seq(8)
    bm.allocate(a)
    assert not bm.can_allocate(seq(5, start=300))  # needs 2, 1 free
    assert bm.can_allocate(seq(4, start=300))
    b = seq(4, start=500)
    bm.allocate(b)
    assert bm.num_free_blocks == 0
    b.append_token(1)  # needs a new block
    assert not bm.can_append(b)
    with pytest.raises(RuntimeError, match="can_append"):
        bm.append_slot(b)
    with pytest.raises(RuntimeError, match="can_allocate"):
        bm.allocate(seq(1, start=900))
    bm.free(a)
    assert bm.can_append(b)


def test_prefix_sharing_refcounts_and_invariant():
    bm = BlockManager(num_blocks=10, block_size=4)
    shared = list(range(10))  # 2 full blocks + 2 tokens
    a, b = Sequence(shared + [50, 51, 52]), Sequence(shared + [60])
    bm.allocate(a)
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2]  # the two full prefix blocks are shared
    assert b.block_table[2] != a.block_table[2]  # the third block differs (50.. vs 60)
    assert b.num_cached_tokens == 8
    assert [bm.blocks[i].ref_count for i in a.block_table[:2]] == [2, 2]
    assert bm.num_free_blocks == 10 - 4 - 1
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in b.block_table[:2]] == [1, 1]
    bm.free(b)
    assert bm.num_free_blocks == 10


def test_freed_blocks_stay_cached_until_reused():
    bm = BlockManager(num_blocks=6, block_size=4)
    a = seq(9)
    bm.allocate(a)
    first = list(a.block_table)
    bm.free(a)
    again = seq(9)  # same tokens: the two full blocks are revived from the free list
    bm.allocate(again)
    assert again.block_table[:2] == first[:2] and again.num_cached_tokens == 8
    bm.free(again)
    assert bm.num_free_blocks == 6
    # Filling the pool with other tokens evicts the cached blocks: no false hits afterwards.
    filler = seq(24, start=1000)
    bm.allocate(filler)
    bm.free(filler)
    last = seq(9)
    bm.allocate(last)
    assert last.num_cached_tokens == 0
    bm.free(last)
    assert bm.num_free_blocks == 6


def test_last_token_block_is_never_shared_and_decode_blocks_are_cached():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(8)  # exactly two full blocks
    bm.allocate(a)
    b = seq(8)
    bm.allocate(b)
    assert b.num_cached_tokens == 4  # the block holding the last prompt token is recomputed
    assert b.block_table[0] == a.block_table[0] and b.block_table[1] != a.block_table[1]
    # A block filled during decode is registered: a longer prompt can reuse it.
    c = seq(3, start=0)
    bm.allocate(c)
    c.append_token(3)
    bm.append_slot(c)  # block now full: tokens 0..3
    d = Sequence([0, 1, 2, 3, 9])
    bm.allocate(d)
    assert d.block_table[0] == c.block_table[0] and d.num_cached_tokens == 4
    for s in (a, b, c, d):
        bm.free(s)
    assert bm.num_free_blocks == 8


def test_prefix_caching_off():
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a, b = seq(9), seq(9)
    bm.allocate(a)
    bm.allocate(b)
    assert not set(a.block_table) & set(b.block_table) and b.num_cached_tokens == 0
    assert bm.hash_to_block == {}


def test_can_allocate_counts_the_blocks_a_prompt_would_share():
    """Near a full pool, a prompt that shares its prefix with a running sequence still fits."""
    bm = BlockManager(num_blocks=4, block_size=4)
    a = seq(13)  # 4 blocks: 3 full + 1 token
    bm.allocate(a)
    assert bm.num_free_blocks == 0
    b = seq(9)  # 100..108: its first 2 blocks are a's, its third (with its last token) is its own
    assert not bm.can_allocate(b)  # 1 block needed, none free
    bm.free(a)  # a's blocks go back to the free list, still cached
    a2 = seq(12, start=700)  # takes 3 fresh blocks, evicting a's caches in free-list order
    bm.allocate(a2)
    c = Sequence(list(range(100, 108)) + [1, 2])  # shares nothing any more
    assert bm.num_free_blocks == 1 and not bm.can_allocate(c)
    bm2 = BlockManager(num_blocks=5, block_size=4)
    x = seq(13)
    bm2.allocate(x)  # 4 of 5 blocks
    y = seq(10)  # 3 blocks, 2 shared with x (in use): needs only 1 free block
    assert bm2.can_allocate(y)
    bm2.allocate(y)
    assert y.num_cached_tokens == 8 and bm2.num_free_blocks == 0
    z = seq(10)  # same prompt once more: shares 2 blocks, needs 1, none free
    assert not bm2.can_allocate(z)
    bm_off = BlockManager(num_blocks=5, block_size=4, enable_prefix_caching=False)
    bm_off.allocate(seq(13))
    assert not bm_off.can_allocate(seq(10))  # without the cache it needs all 3


def test_misuse():
    bm = BlockManager(4, 4)
    s = seq(3)
    with pytest.raises(ValueError, match="allocate it first"):
        bm.append_slot(s)
    bm.allocate(s)
    with pytest.raises(ValueError, match="already holds"):
        bm.allocate(s)
    assert "free=3" in repr(bm)
