"""Prefix hashing and the bounded prefix index (checked against a brute-force model)."""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling import prefix
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.prefix import PrefixIndex, block_hashes

from .helpers import cycle, ep, handle
from .test_blockhash_spans import colliding_token_spans


def test_hash_chain_matches_reference_definition() -> None:
    text = "abcd" * 40  # 160 chars -> 2 full blocks of 64
    seed = xxhash.xxh64_intdigest(b"llama")
    h0 = xxhash.xxh64_intdigest(text[:64].encode() + struct.pack("<Q", seed))
    h1 = xxhash.xxh64_intdigest(text[64:128].encode() + struct.pack("<Q", h0))
    assert block_hashes("llama", text, 64) == [h0, h1]
    assert block_hashes("other", text, 64)[0] != h0  # the model seeds the chain
    assert len(block_hashes("m", "x" * 64 * 300, 64)) == 256  # at most 256 blocks
    assert block_hashes("m", "x" * 63, 64) == []


def test_shared_prefix_diverging_suffix() -> None:
    a = block_hashes("m", "s" * 128 + "a" * 64, 64)
    b = block_hashes("m", "s" * 128 + "b" * 64, 64)
    assert a[:2] == b[:2] and a[2] != b[2]


def _chain(model: str, data: str | bytes, chunk: int, max_blocks: int = 256) -> list[int]:
    """The definition, block by block (no memoized spans)."""
    raw = data[: chunk * max_blocks]
    raw = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    prev = xxhash.xxh64_intdigest(model.encode())
    out = []
    for i in range(min(len(raw) // chunk, max_blocks)):
        prev = xxhash.xxh64_intdigest(raw[i * chunk : (i + 1) * chunk] + struct.pack("<Q", prev))
        out.append(prev)
    return out


def test_memoized_spans_give_the_definitions_hashes() -> None:
    """A span's hashes come from the memo only for the same bytes after the same chain (model and every
    block before it) at the same block size; the caller's list is its own."""
    prefix.clear_spans()
    span = prefix.SPAN_BLOCKS
    shared = "".join(f"w{i} " for i in range(2000))
    prompts: list[tuple[str, str | bytes, int]] = []
    for model in ("m", "other"):
        for chunk in (64, 32, 16):
            for cut in (0, chunk * span, chunk * span * 3 + 5, chunk):
                # the same span bytes after a different prefix, and after none
                prompts.append((model, shared[cut:], chunk))
                prompts.append((model, "x" * chunk + shared[cut:], chunk))
    prompts.append(("m", "é" * 40 * 64 + shared, 64))  # non-ASCII: blocks are bytes
    ids = bytes(range(256)) * 64
    prompts += [("m", ids, 64), ("m", ids[64:], 64), ("m", ids, 32)]
    for _ in range(3):  # later rounds hit the spans learnt (one more per prompt each round)
        for model, data, chunk in prompts:
            got = block_hashes(model, data, chunk)
            assert got == _chain(model, data, chunk)
            got.append(0)  # the caller owns its list: the memo is not changed by it
    assert prefix._spans
    prefix.clear_spans()


def test_memoized_spans_are_bounded() -> None:
    prefix.clear_spans()
    chunk = 4
    entries = prefix.SPAN_BYTES // (chunk * prefix.SPAN_BLOCKS + prefix._SPAN_ENTRY_COST)
    for i in range(entries + 50):
        block_hashes("m", f"{i:08d}" * (prefix.SPAN_BLOCKS // 2), chunk)
    assert len(prefix._spans) == entries
    # least recently used goes first: a span looked up again stays
    first = f"{entries + 49:08d}" * (prefix.SPAN_BLOCKS // 2)
    block_hashes("m", first, chunk)
    for i in range(entries - 1):
        block_hashes("m", f"n{i:07d}" * (prefix.SPAN_BLOCKS // 2), chunk)
    seed = xxhash.xxh64_intdigest(b"m")
    assert (seed, first.encode()) in prefix._spans
    assert len(prefix._spans) == entries
    prefix.clear_spans()


@pytest.mark.parametrize("chunk", [4, 64, 512])
def test_memoized_spans_memory_stays_under_span_bytes(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """The memo is bounded by its estimated bytes (the span's bytes, now its key, and a measured cost per
    entry), whatever the block sizes it is used with: measured with tracemalloc, within SPAN_BYTES."""
    cap = 256 * 1024
    monkeypatch.setattr(prefix, "SPAN_BYTES", cap)
    prefix.clear_spans()
    rng = random.Random(chunk)
    size = chunk * prefix.SPAN_BLOCKS
    fill = 2 * cap // size + 4
    data = [rng.randbytes(size + chunk) for _ in range(fill + 1)]  # a span, then a block: slices are new
    block_hashes("m", data[-1], chunk)
    prefix.clear_spans()
    tracemalloc.start()
    try:
        for d in data[:fill]:
            block_hashes("m", d, chunk)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        n = len(prefix._spans)
        prefix.clear_spans()
    assert n < fill  # it evicted
    assert cap // 2 < used <= cap, f"{used} B held at chunk {chunk}"


def test_a_span_colliding_under_xxh3_gets_its_own_hashes() -> None:
    """Review s11-hash L2: the key was (chain value, the span's xxh3-128 seeded with the chunk), which can
    be made to collide; it is the span's bytes. The approximate scorer hashes a token-id prompt as its
    uint32 bytes with chunk = block tokens * 4."""
    prefix.clear_spans()
    try:
        chunk = 64
        a, b = colliding_token_spans(chunk)
        da, db = struct.pack("<256I", *a), struct.pack("<256I", *b)
        assert xxhash.xxh3_128_intdigest(da, chunk) == xxhash.xxh3_128_intdigest(db, chunk)
        for _ in range(2):
            assert block_hashes("m", da, chunk) == _chain("m", da, chunk)
            assert block_hashes("m", db, chunk) == _chain("m", db, chunk)
    finally:
        prefix.clear_spans()


def test_a_span_enters_the_memo_only_once_complete(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s11-hash I2: the span's list went into the memo before it was filled, so an interrupted
    fill left a truncated entry that later hits returned."""
    prefix.clear_spans()
    text = "x" * (64 * prefix.SPAN_BLOCKS)
    real = prefix._h64
    calls = {"n": 0}

    def flaky(b: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("interrupted")
        return real(b)

    monkeypatch.setattr(prefix, "_h64", flaky)
    with pytest.raises(RuntimeError):
        block_hashes("m", text, 64)
    assert not prefix._spans and prefix._span_bytes == 0
    monkeypatch.setattr(prefix, "_h64", real)
    try:
        assert block_hashes("m", text, 64) == _chain("m", text, 64)
    finally:
        prefix.clear_spans()


def test_a_prefix_is_learnt_one_span_per_request() -> None:
    prefix.clear_spans()
    text = "".join(f"w{i} " for i in range(1000))[: 64 * prefix.SPAN_BLOCKS * 3 + 100]
    for k in range(1, 5):
        assert block_hashes("m", text, 64) == _chain("m", text, 64)
        assert len(prefix._spans) == min(k, 3)
    prefix.clear_spans()


def test_index_match_and_lru_capacity() -> None:
    idx = PrefixIndex(default_capacity=4)
    idx.add("a", [1, 2, 3])
    idx.add("b", [1, 2])
    assert idx.match([1, 2, 3, 4], ["a", "b", "c"]) == [3, 2, 0]
    idx.add("a", [7, 8])  # 5 blocks > capacity 4: the least recently used (1) goes
    assert idx.match([1, 2, 3], ["a", "b"]) == [0, 2]
    assert idx.total == 6


def test_global_cap_is_hard() -> None:
    idx = PrefixIndex(default_capacity=1000, max_total_blocks=100)
    for e in range(10):
        idx.add(f"e{e}", list(range(e * 1000, e * 1000 + 50)))
        assert idx.total <= 100
    assert idx.stats().endpoints == 10


def test_remove_endpoint_frees_slot_and_hashes() -> None:
    idx = PrefixIndex()
    idx.add("a", [1, 2])
    idx.add("b", [2, 3])
    idx.remove_endpoint("a")
    assert idx.match([1], ["a", "b"]) == [0, 0] and idx.match([2, 3], ["b"]) == [2]
    idx.add("c", [1])  # reuses a's slot without inheriting its blocks
    assert idx.match([2], ["c"]) == [0]
    assert idx.stats().unique_hashes == 3


def test_engine_lru_mode_ages_the_head_last_and_counts_unnamed_blocks() -> None:
    idx = PrefixIndex(default_capacity=6)
    idx.add("a", [1, 2, 3], tail_first=True)
    idx.add("a", [9], filler=3)  # 3 blocks nobody names, then 9: 7 blocks > 6, the oldest (3) goes
    assert idx.match([1, 2, 3], ["a"]) == [2]  # the head survives (vLLM evicts a request's tail first)
    assert idx.total == 4  # entries (memory): 1, 2, one placeholder for 3 blocks, 9
    idx.add("a", [], filler=2)  # the head ages out too
    assert idx.match([1, 2], ["a"]) == [0] and idx.match([9], ["a"]) == [1]
    assert all(h >= 0 for h in idx.hot(10))  # placeholders are never reported as prefixes
    idx.remove_endpoint("a")
    assert idx.total == 0 and idx.stats().unique_hashes == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4), st.lists(st.integers(0, 12), max_size=8), st.integers(0, 3), st.booleans()
        ),
        max_size=25,
    ),
    st.lists(st.integers(0, 12), max_size=8),
    st.integers(1, 10),
)
def test_index_matches_brute_force(
    ops: list[tuple[int, list[int], int, bool]], query: list[int], cap: int
) -> None:
    idx = PrefixIndex(default_capacity=cap)
    # address -> LRU order, oldest first: [hash, 1] per block, [-1, n] for a placeholder of n blocks
    model: dict[str, list[list[int]]] = {}
    for e, hashes, filler, tail_first in ops:
        a = f"e{e}"
        lru = model.setdefault(a, [])
        if filler:
            lru.append([-1, filler])
        for h in reversed(hashes) if tail_first else hashes:
            lru[:] = [x for x in lru if x[0] != h] + [[h, 1]]
        size = sum(w for _, w in lru)
        while size > cap:  # the oldest ages out; a placeholder may age out in part
            cut = min(lru[0][1], size - cap)
            lru[0][1] -= cut
            size -= cut
            if not lru[0][1]:
                lru.pop(0)
        idx.add(a, hashes, filler=filler, tail_first=tail_first)
    addrs = [f"e{i}" for i in range(6)]
    want = []
    for a in addrs:
        held = {h for h, _ in model.get(a, [])}
        n = 0
        while n < len(query) and query[n] in held:
            n += 1
        want.append(n)
    assert idx.match(query, addrs) == want
    assert idx.total == sum(len(v) for v in model.values())


def test_scorer_learns_from_picks_and_purges_removed_endpoints() -> None:
    store = EndpointStore([ep("a:1"), ep("b:1")])
    eps = list(store.all())
    s = PrefixCacheScorer("p", handle(store))
    text = "q" * 64 * 4 + "tail"
    c = cycle(text)
    s.prepare(c, eps)
    assert s.score(c, eps) == [0.0, 0.0]
    s.on_picked(c, eps[1])
    c2 = cycle("q" * 64 * 2 + "different" * 20)
    s.prepare(c2, eps)
    m = prefix_match(c2)
    assert m is not None and m.total == 4
    assert s.score(c2, eps) == [0.0, 0.5]
    store.remove("b:1")
    assert s.index.total == 0


def test_engine_lru_scorer_counts_generated_blocks() -> None:
    """With ``engineLru`` a pick's generated tokens take index capacity (the server caches them too):
    a decode-heavy request pushes an older prefix's tail out, as it does on the server."""
    for engine_lru, still_held in ((False, 4), (True, 1)):
        a = ep("a:1", block_size=16, num_gpu_blocks=8)
        s = PrefixCacheScorer("p", handle(), engine_lru=engine_lru)
        c = cycle("p" * 64 * 4)
        s.prepare(c, [a])
        s.on_picked(c, a)
        big = cycle("x" * 64, max_tokens=16 * 6)  # + 1 prompt block + 6 generated: 11 > 8, 3 go
        s.prepare(big, [a])
        s.on_picked(big, a)
        again = cycle("p" * 64 * 4)
        s.prepare(again, [a])
        m = prefix_match(again)
        assert m is not None and m.matched.get("a:1", 0) == still_held


def test_block_size_auto_tuned_from_server() -> None:
    a = ep("a:1", block_size=128)
    s = PrefixCacheScorer("p", handle())
    c = cycle("z" * 1024)
    s.prepare(c, [a])
    m = prefix_match(c)
    assert m is not None and m.chunk == 512 and m.total == 2
    fixed = PrefixCacheScorer("p", handle(), block_size=16, auto_tune=False)
    fixed.prepare(c, [a])
    m2 = prefix_match(c)
    assert m2 is not None and m2.chunk == 64


def test_token_ids_hash_whole_tokens() -> None:
    s = PrefixCacheScorer("p", handle())
    c = cycle(token_ids=list(range(40)))
    s.prepare(c, [ep("a:1")])
    m = prefix_match(c)
    assert m is not None and m.total == 2  # 40 tokens / 16 per block
