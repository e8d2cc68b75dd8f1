"""vLLM block hashing through the span memo: the same digests and event hashes as block by block."""

from __future__ import annotations

import pickle
import random
import struct
import tracemalloc
from enum import IntEnum

import pytest
import xxhash

from kvgate.scheduling import blockhash
from kvgate.scheduling.blockhash import VLLMBlockHasher, to_external


def _definition(h: VLLMBlockHasher, tokens: list[int]) -> list[bytes]:
    out, parent, bs = [], h.none_hash, h.block_size
    for i in range(len(tokens) // bs):
        parent = h._fn((parent, tuple(tokens[i * bs : (i + 1) * bs]), None))
        out.append(parent)
    return out


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
def test_memoized_spans_equal_the_definition(algo: str) -> None:
    """A span comes from the memo only after the same parent digest, with the same tokens, at the same
    block size; the callers' lists are their own."""
    rng = random.Random(3)
    hashers = [VLLMBlockHasher(bs, algo, seed="0") for bs in (16, 32, 128, 512)]
    assert [h.span_blocks for h in hashers] == [16, 8, 2, 1]
    system = [rng.randrange(150_000) for _ in range(256 * 5 + 5)]
    prompts = []
    for k in range(3):
        tail = [rng.randrange(150_000) for _ in range(rng.randrange(300))]
        prompts += [system + tail, [7] * (16 * k + 1) + system + tail, system[256:] + tail]
    prompts.append(system[:512] * 3)  # the same span's tokens after different parents
    for _ in range(3):  # later rounds hit the spans learnt (one more per prompt each round)
        for h in hashers:
            for tokens in prompts:
                want = _definition(h, tokens)
                got = h.block_hashes(tokens)
                assert got == want
                ext = h.external_hashes(tokens, max_blocks=h.span_blocks + 1)
                assert ext == [to_external(d) for d in want[: h.span_blocks + 1]]
                got.append(b"")  # the caller's list: the memo is not changed by it
                ext.append(0)
    assert all(h._spans for h in hashers)


def test_token_ids_a_uint32_cannot_hold_are_hashed_block_by_block_as_before() -> None:
    h = VLLMBlockHasher(16)
    base = list(range(100, 100 + 256))
    assert h.block_hashes(base) == _definition(h, base)
    for odd in (2**32, -1, 1.5, "x"):
        tokens: list = [*base[:-1], odd]
        assert h.block_hashes(tokens) == _definition(h, tokens)


def test_span_memo_is_bounded_least_recently_used_first(monkeypatch: pytest.MonkeyPatch) -> None:
    h = VLLMBlockHasher(16, "xxhash", seed="0")
    prompts = [[p] * 256 for p in range(12)]  # (each span's key the same length: the same cost)
    h.block_hashes(prompts[11])
    monkeypatch.setattr(blockhash, "SPAN_BYTES", 8 * h._span_bytes)  # room for 8 entries
    h._spans.clear()
    h._span_bytes = 0
    for tokens in prompts[:8]:
        h.block_hashes(tokens)
    h.block_hashes(prompts[0])  # used again: the next to go is prompts[1]'s
    for tokens in prompts[8:11]:
        h.block_hashes(tokens)
    assert len(h._spans) == 8
    kept = {d[0][-1] for d in h._spans.values()}
    assert _definition(h, prompts[0])[-1] in kept
    assert _definition(h, prompts[1])[-1] not in kept


def test_a_prefix_is_learnt_one_span_per_request() -> None:
    """Spans are looked up until the first one missing, which is remembered: the rest of that prompt
    follows a digest never seen, so looking it up or remembering it is wasted work."""
    h = VLLMBlockHasher(16)
    tokens = list(range(1000, 1000 + 256 * 3 + 40))
    for k in range(1, 5):
        assert h.block_hashes(tokens) == _definition(h, tokens)
        assert len(h._spans) == min(k, 3)


@pytest.mark.parametrize("block_size", [1, 4, 16, 512])
def test_span_memo_memory_stays_under_span_bytes_at_every_block_size(
    monkeypatch: pytest.MonkeyPatch, block_size: int
) -> None:
    """Review s11-hash L1: an entry is a ~256-token span, 256 / block size blocks, so a bound in entries
    was ~14x the documented one at block size 1. The memo is bounded by its estimated bytes instead:
    measured with tracemalloc, it holds at most SPAN_BYTES (and uses most of it) at every block size."""
    cap = 256 * 1024
    monkeypatch.setattr(blockhash, "SPAN_BYTES", cap)
    h = VLLMBlockHasher(block_size, "sha256")
    step = h.span_blocks * block_size
    rng = random.Random(block_size)
    fill = 2 * cap // (h.span_blocks * 100 + step * 4) + 4  # at least twice what fits
    prompts = [[rng.randrange(150_000) for _ in range(step)] for _ in range(fill + 1)]
    h.external_hashes(prompts[-1])  # (first-use allocations outside the measure)
    h._spans.clear()
    h._span_bytes = 0
    tracemalloc.start()
    try:
        for p in prompts[:fill]:
            h.external_hashes(p)
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(h._spans) < fill  # it evicted
    assert cap // 2 < used <= cap, f"{used} B held at block size {block_size}"
    assert h._span_bytes <= cap


# Review s11-hash L2: with the span's xxh3-128 (public seed) as the key, two different spans with the same
# key take microseconds to build, and the second got the first's hashes. XXH3's long-input accumulation
# (scalar form): stripe n, lane 0 adds d to acc[1] and lo32(d ^ k_n) * hi32(d ^ k_n) to acc[0]; setting
# the low token of stripes 0 and 1 to lo32(k_0), lo32(k_1) zeroes both products, and moving the high token
# of stripe 0 by -c and of stripe 1 by +c keeps acc[1].
_KSECRET16 = bytes.fromhex("b8fe6c3923a44bbe7c01812cf721ad1c")  # XXH3's default secret, bytes 0..15
_M64 = (1 << 64) - 1


def colliding_token_spans(seed: int, n: int = 256) -> tuple[list[int], list[int]]:
    """Two token spans (ids < 2**31) whose uint32 bytes have the same seeded xxh3-128."""
    k0 = (struct.unpack_from("<Q", _KSECRET16, 0)[0] + seed) & _M64
    k1 = (struct.unpack_from("<Q", _KSECRET16, 8)[0] - seed) & _M64
    a = [1000 + i for i in range(n)]
    a[0], a[16] = k0 & 0xFFFFFFFF, k1 & 0xFFFFFFFF
    b = list(a)
    b[1] -= 500
    b[17] += 500
    return a, b


def test_the_constructed_spans_collide_under_xxh3() -> None:
    a, b = colliding_token_spans(16)
    pa, pb = struct.pack("<256I", *a), struct.pack("<256I", *b)
    assert pa != pb and max(a + b) < 2**31
    assert xxhash.xxh3_128_intdigest(pa, 16) == xxhash.xxh3_128_intdigest(pb, 16)


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor"])
def test_a_span_colliding_under_xxh3_gets_its_own_hashes(algo: str) -> None:
    h = VLLMBlockHasher(16, algo)  # type: ignore[arg-type]
    a, b = colliding_token_spans(16)
    for _ in range(2):
        assert h.block_hashes(a) == _definition(h, a)
        assert h.block_hashes(b) == _definition(h, b)


class _Tok(IntEnum):
    ONE = 1


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
@pytest.mark.parametrize("other", [True, _Tok.ONE])
def test_bool_or_int_subclass_ids_get_their_own_hashes_in_either_order(algo: str, other: int) -> None:
    """Review s11-hash I1: True (or an IntEnum member) packed as uint32 shares 1's key, though pickle
    hashes them apart (vLLM and d3720bb): whichever came first decided the other's hashes. The key is the
    ids' pickle, which tells them apart. Each gets what the block-by-block path gives it, as d3720bb did
    (the CBOR algos' table encodes True as 1 there, so those two agree)."""
    ints = [1] * 256 + [5] * 16
    odd = [other] * 256 + [5] * 16
    assert pickle.dumps(ints) != pickle.dumps(odd)
    for first, second in ((ints, odd), (odd, ints)):
        h = VLLMBlockHasher(16, algo, seed="0")  # type: ignore[arg-type]
        want = {id(t): h._blocks(t, 0, len(t) // 16, h.none_hash)[0] for t in (ints, odd)}
        if not algo.endswith("cbor"):
            assert want[id(ints)] != want[id(odd)]
            assert want[id(odd)] == _definition(h, odd)
        for _ in range(2):
            assert h.block_hashes(first) == want[id(first)]
            assert h.block_hashes(second) == want[id(second)]


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
def test_packed_array_ids_hash_as_the_list_of_the_same_ids_in_either_order(algo: str) -> None:
    """Review s15-rv L1: a tokenizer's ``array('I')`` is hashed as it is (no list per pick): its span memo
    entries are keyed on the array's pickle, apart from a list's, and every digest and event hash equals
    the list's and the definition's, whichever type came first, memo miss or hit, whole spans or the
    tail, with ``max_blocks``, ids across the CBOR table's and uint32's byte widths."""
    from array import array

    rng = random.Random(15)
    system = [rng.randrange(150_000) for _ in range(256 * 3 + 9)]
    wide = [0, 23, 24, 255, 256, 65_535, 65_536, 2**31 - 1, 2**32 - 1]
    prompts = [system + [rng.randrange(150_000) for _ in range(rng.randrange(300))] for _ in range(3)]
    prompts += [wide * 64 + system, system[:100], []]
    for lists_first in (True, False):
        hashers = [VLLMBlockHasher(bs, algo, seed="0") for bs in (16, 128)]  # type: ignore[arg-type]
        for _ in range(2):  # the second round: memo hits
            for h in hashers:
                for tokens in prompts:
                    packed = array("I", tokens)
                    want = _definition(h, tokens)
                    order = (tokens, packed) if lists_first else (packed, tokens)
                    for ids in order:
                        assert h.block_hashes(ids) == want
                        assert h.external_hashes(ids) == [to_external(d) for d in want]
                        assert h.external_hashes(ids, max_blocks=5) == [to_external(d) for d in want[:5]]
        assert all(isinstance(k[1], bytes) for h in hashers for k in h._spans)
        assert any(pickle.loads(k[1]).__class__ is array for h in hashers for k in h._spans)
