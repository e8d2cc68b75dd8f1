"""Prompt prefixes that this gateway's requests in flight hold at each endpoint.

A model server's KV-cache use (vLLM's ``kv_cache_usage_perc``: 1 - free blocks / blocks, where a cached
block no running request references is free, evictable; SGLang's ``token_usage`` likewise) counts a
prompt block once however many running requests reference it, and counts a cached block again as soon
as a request references it. So a request takes new KV for its prompt except the blocks another running
request already holds there: a prefix-cache hit on an idle cached prefix takes its blocks off the free
list like a miss; a hit on a prefix a running request holds takes nothing. The utilization detector's
estimate of the KV this gateway's requests take after a page (``InFlight.sent_tokens``) uses this to
count a prompt block that several of its requests in flight share once (review s8-sat R3).

Keys: the prompt's chained block hashes (the approximate prefix index's, ``PrefixMatch.hashes``), one
every ``stride`` blocks, about ``KEY_TOKENS`` tokens apart, then, for a prompt longer than the index's
window, keys of its tail chained on from the window's last hash, one about every ``KEY_TOKENS`` tokens
too. A key stands for the whole prefix up to its block (a chained hash), so the keys a request in
flight holds are closed under prefixes, and the leading keys of a new request found here are the
prefix it shares with one. The share is counted down to a whole key: a request is charged at most one
key's tokens (``KEY_TOKENS``, or a block's when larger; coarser where the window or the tail has more
blocks than ``MAX_KEYS / 2`` such keys cover) plus a partial block more than it shares. Kept compact
(an unsigned 64-bit ``array``, at most ``MAX_KEYS`` keys per request) and bounded by its callers: one
entry per key of each request they track.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import xxhash

KEY_TOKENS = 256
MAX_KEYS = 256  # keys per request: at most half of them the window's, half the tail's
_h64 = xxhash.xxh64_intdigest


class PrefixKeys:
    """A prompt's prefix keys (unsigned 64-bit, the window's then the tail's) and the tokens they stand
    for: ``tokens(n)`` for its first ``n`` keys."""

    __slots__ = ("head", "head_tokens", "keys", "tail_tokens", "window_tokens")

    def __init__(
        self, keys: array[int], head: int, head_tokens: int, window_tokens: int, tail_tokens: int
    ) -> None:
        self.keys = keys
        self.head = head  # how many of ``keys`` are the window's
        self.head_tokens = head_tokens  # tokens per window key
        self.window_tokens = window_tokens  # the whole window's tokens (where the tail's chain starts)
        self.tail_tokens = tail_tokens  # tokens per tail key

    def tokens(self, n: int) -> int:
        """The prompt tokens its first ``n`` keys stand for."""
        if n <= self.head:
            return n * self.head_tokens
        return self.window_tokens + (n - self.head) * self.tail_tokens


def chain_keys(
    hashes: Sequence[int], block_tokens: int, data: str | bytes = "", chunk: int = 0
) -> PrefixKeys:
    """The keys of a prompt whose window blocks (``block_tokens`` tokens, ``chunk`` characters or bytes
    each) hash to ``hashes``, and, when the hashed prompt ``data`` goes on past them, of its tail: one
    about every ``KEY_TOKENS`` tokens, at most ``MAX_KEYS / 2`` of each (coarser past that)."""
    bt = max(1, block_tokens)
    half = MAX_KEYS // 2
    n = len(hashes)
    stride = max(1, KEY_TOKENS // bt, -(-n // half))
    keys = array("Q", hashes[stride - 1 :: stride])
    head = len(keys)
    tail_tokens = 0
    start = n * chunk
    if n and chunk > 0 and len(data) - start >= chunk:
        per = max(1, KEY_TOKENS // bt, -(-(len(data) - start) // (chunk * half)))  # blocks per tail key
        size = per * chunk
        tail_tokens = per * bt
        _tail_keys(keys, data, start, size, hashes[-1])
    return PrefixKeys(keys, head, stride * bt, n * bt, tail_tokens)


def _tail_keys(out: array[int], data: str | bytes, start: int, size: int, prev: int) -> None:
    """Append to ``out`` the chained keys of ``data`` past ``start``, one per full ``size`` characters (or
    bytes), each the hash of its piece seeded by the key before (``prev`` first: the window's last)."""
    end = start + (len(data) - start) // size * size
    if isinstance(data, str) and not data.isascii():  # (a piece is characters: each encoded on its own)
        for i in range(start, end, size):
            prev = _h64(data[i : i + size].encode("utf-8", "surrogatepass"), prev)
            out.append(prev)
        return
    raw = memoryview(data[start:end].encode("ascii") if isinstance(data, str) else data)
    base = 0 if isinstance(data, str) else start
    for i in range(base, base + end - start, size):
        prev = _h64(raw[i : i + size], prev)
        out.append(prev)


class HeldPrefixes:
    """Per endpoint: how many requests in flight hold each key."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: dict[str, dict[int, int]] = {}

    def take(self, address: str, keys: Sequence[int]) -> int:
        """Hold ``keys`` at ``address`` for one more request; how many leading ``keys`` a request in
        flight there held already (one pass: this runs for every dispatch)."""
        held = self._at.get(address)
        if held is None:
            held = self._at[address] = {}
        shared, run = 0, True
        get = held.get
        for k in keys:
            n = get(k, 0)
            if run:
                if n:
                    shared += 1
                else:
                    run = False
            held[k] = n + 1
        return shared

    def release(self, address: str, keys: Sequence[int]) -> None:
        held = self._at.get(address)
        if held is None:
            return
        for k in keys:
            n = held.get(k, 0) - 1
            if n > 0:
                held[k] = n
            else:
                held.pop(k, None)
        if not held:
            del self._at[address]

    def __len__(self) -> int:
        return sum(len(h) for h in self._at.values())
