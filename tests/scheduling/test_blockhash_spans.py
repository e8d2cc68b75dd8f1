"""vLLM block hashing through the span memo: the same digests and event hashes as block by block."""

from __future__ import annotations

import random

import pytest

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
    monkeypatch.setattr(blockhash, "SPAN_ENTRIES", 8)
    h = VLLMBlockHasher(16, "xxhash", seed="0")
    prompts = [[p] * 256 for p in range(12)]
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
