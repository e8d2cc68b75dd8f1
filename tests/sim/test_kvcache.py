"""The paged KV cache: chained block hashes, LRU eviction of free cached blocks, KV events."""

from __future__ import annotations

import random
from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.sim.kvcache import (
    AllBlocksCleared,
    BlockPool,
    BlockRemoved,
    BlockStored,
    lora_int_id,
    xxhash64_block,
    xxhash64_chain,
)


def _tokens(start: int, end: int) -> list[int]:
    return list(range(start, end))


def test_block_hash_chains_on_parent_tokens_and_lora() -> None:
    toks = list(range(16))
    h = xxhash64_block(None, toks, None)
    assert h == xxhash64_block(None, toks, None)
    assert 0 <= h < 1 << 64
    assert xxhash64_block(h, toks, None) != h  # same tokens, different parent
    assert xxhash64_block(None, toks, "a") != h
    assert xxhash64_block(None, toks, "a") != xxhash64_block(None, toks, "b")
    assert xxhash64_block(None, [*toks[:-1], 99], None) != h
    assert lora_int_id(None) is None
    assert lora_int_id("a") == lora_int_id("a") and lora_int_id("a") != lora_int_id("b")


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 2**40), max_size=100),
    st.sampled_from([1, 4, 16]),
    st.one_of(st.none(), st.integers(0, 2**63)),
    st.sampled_from([None, "", "ad"]),
)
def test_chain_equals_block_by_block(
    tokens: list[int], bs: int, parent: int | None, lora: str | None
) -> None:
    expected = []
    p = parent
    for i in range(len(tokens) // bs):
        p = xxhash64_block(p, tokens[i * bs : (i + 1) * bs], lora)
        expected.append(p)
    assert xxhash64_chain(parent, tokens, bs, lora) == expected


def test_lru_eviction_takes_the_oldest_free_cached_block_first() -> None:
    pool = BlockPool(num_blocks=4, block_size=2, emit_events=True)
    a, b, c, d = pool.allocate(4)
    assert pool.num_free == 0 and pool.usage == 1.0
    for blk, h in ((a, 10), (b, 11), (c, 12), (d, 13)):
        pool.cache_blocks([blk], [h], 0, 1, _tokens, None)
    pool.drain_events()
    pool.free_blocks([a])  # freed first: evicted first
    pool.free_blocks([c])
    pool.free_blocks([b])
    assert pool.usage == 0.25
    # All three are still findable while free.
    assert pool.lookup([10], 1) == [a] and pool.lookup([12], 1) == [c]
    (got,) = pool.allocate(1)
    assert got == a
    assert pool.lookup([10], 1) == []
    assert pool.lookup([12], 1) == [c]
    assert pool.drain_events() == [BlockRemoved([10], "GPU")]
    assert pool.evictions == 1


def test_touching_a_free_cached_block_revives_it() -> None:
    pool = BlockPool(num_blocks=3, block_size=2)
    x, y, z = pool.allocate(3)
    pool.cache_blocks([x, y], [1, 2], 0, 2, _tokens, None)
    pool.free_blocks([x, y])
    hit = pool.lookup([1, 2, 3], 3)
    assert hit == [x, y]
    assert pool.num_reviving(hit) == 2
    pool.touch(hit)
    assert pool.num_free == 0 and pool.ref[x] == 1
    pool.free_blocks([x, y, z])
    # Freed in reverse: the request's tail block goes first.
    assert pool.free_order() == [z, y, x]


def test_block_stored_batches_runs_and_skips_duplicates() -> None:
    pool = BlockPool(num_blocks=8, block_size=2, emit_events=True)
    blocks = pool.allocate(3)
    pool.cache_blocks(blocks, [100, 101, 102], 0, 3, _tokens, "ad")
    (ev,) = pool.drain_events()
    assert isinstance(ev, BlockStored)
    assert ev.block_hashes == [100, 101, 102]
    assert ev.parent_block_hash is None
    assert ev.token_ids == [0, 1, 2, 3, 4, 5]
    assert ev.block_size == 2 and ev.lora_name == "ad" and ev.lora_id == lora_int_id("ad")
    # A second request computing the same first block: a duplicate stays uncached; the rest is a new run.
    other = pool.allocate(2)
    pool.cache_blocks(other, [100, 200], 0, 2, _tokens, None)
    (ev2,) = pool.drain_events()
    assert isinstance(ev2, BlockStored)
    assert ev2.block_hashes == [200] and ev2.parent_block_hash == 100 and ev2.token_ids == [2, 3]
    assert pool.cached[100] == blocks[0]


def test_reset_refused_while_in_use_then_clears() -> None:
    pool = BlockPool(num_blocks=2, block_size=2, emit_events=True)
    blocks = pool.allocate(1)
    pool.cache_blocks(blocks, [7], 0, 1, _tokens, None)
    pool.drain_events()
    assert not pool.reset()
    pool.free_blocks(blocks)
    assert pool.reset()
    assert pool.lookup([7], 1) == []
    assert pool.drain_events() == [AllBlocksCleared()]


def test_caching_disabled_never_hits() -> None:
    pool = BlockPool(num_blocks=2, block_size=2, enable_caching=False, emit_events=True)
    blocks = pool.allocate(1)
    pool.cache_blocks(blocks, [7], 0, 1, _tokens, None)
    assert pool.lookup([7], 1) == [] and pool.drain_events() == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "hit"]), st.integers(0, 7)), max_size=60))
def test_pool_invariants_under_random_operations(ops: list[tuple[str, int]]) -> None:
    pool = BlockPool(num_blocks=8, block_size=1)
    held: list[list[int]] = []
    for op, k in ops:
        if op == "alloc" and pool.num_free >= 1:
            n = 1 + k % min(3, pool.num_free)
            blocks = pool.allocate(n)
            pool.cache_blocks(blocks, [k * 10 + i for i in range(n)], 0, n, _tokens, None)
            held.append(blocks)
        elif op == "free" and held:
            pool.free_blocks(held.pop(k % len(held)))
        elif op == "hit":
            hit = pool.lookup([k * 10, k * 10 + 1], 2)
            if hit:
                pool.touch(hit)
                held.append(hit)
        # Free queue == blocks nobody holds; the hash index points at blocks carrying that hash.
        free = pool.free_order()
        assert len(free) == len(set(free)) == pool.num_free
        assert set(free) == {b for b in range(8) if b >= len(pool.ref) or pool.ref[b] == 0}
        assert all(r >= 0 for r in pool.ref)
        assert sum(len(h) for h in held) == sum(pool.ref)
        for h, b in pool.cached.items():
            assert pool.block_hash[b] == h


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "free", "hit"]), st.integers(0, 7)), max_size=400))
def test_free_queue_order_matches_a_plain_lru(ops: list[tuple[str, int]]) -> None:
    _check_against_plain_lru(ops)


def test_free_queue_stays_bounded_over_a_long_run() -> None:
    # Enough frees that stale entries would pile up without compaction (> 2 * blocks + 64 of them).
    rng = random.Random(5)
    ops = [(rng.choice(["alloc", "free", "free", "hit"]), rng.randrange(8)) for _ in range(5000)]
    assert _check_against_plain_lru(ops) > 10 * (2 * 6 + 64)


def _check_against_plain_lru(ops: list[tuple[str, int]]) -> int:
    # The pool's lazy queue (fresh counter + deque with stale entries + compaction) against the obvious
    # model: an ordered dict of free blocks, revival deletes, freeing appends, allocation pops the oldest.
    pool = BlockPool(num_blocks=6, block_size=1)
    frees = 0
    model: OrderedDict[int, None] = OrderedDict.fromkeys(range(6))
    refs = [0] * 6
    held: list[list[int]] = []
    for op, k in ops:
        if op == "alloc" and pool.num_free >= 1:
            n = 1 + k % min(3, pool.num_free)
            blocks = pool.allocate(n)
            assert blocks == [model.popitem(last=False)[0] for _ in range(n)]
            for b in blocks:
                refs[b] = 1
            pool.cache_blocks(blocks, [k * 10 + i for i in range(n)], 0, n, _tokens, None)
            held.append(blocks)
        elif op == "free" and held:
            blocks = held.pop(k % len(held))
            pool.free_blocks(blocks)
            for b in reversed(blocks):
                refs[b] -= 1
                if refs[b] == 0:
                    model[b] = None
                    frees += 1
        elif op == "hit":
            hit = pool.lookup([k * 10, k * 10 + 1], 2)
            if hit:
                pool.touch(hit)
                for b in hit:
                    if refs[b] == 0:
                        del model[b]
                    refs[b] += 1
                held.append(hit)
        assert pool.free_order() == list(model)
        assert len(pool._queue) <= 2 * pool.num_blocks + 64  # stale entries are bounded
    return frees
