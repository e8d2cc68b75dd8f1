"""Approximate prefix-cache tracking: block hashing and a bounded index of what each endpoint holds.

Hashing follows the reference: text is cut into blocks of ``block_size * 4`` characters (≈ tokens *
4), only full blocks, at most 256; seed = xxhash64(model); block_i = xxhash64(block bytes || le
uint64(block_{i-1})). Only the first ``chunk * max_blocks`` characters are ever encoded, so a 220 KB
prompt costs the same as a 16 KB one. The chain is computed ``SPAN_BLOCKS`` blocks at a time through a
bounded memo of spans (the same values, one look-up per span where a prefix repeats; see ``_spans``): a
prompt's spans are looked up until the first one missing, which is hashed and remembered; the rest is
hashed block by block, unremembered (it follows a chain value that was not in the memo, so its spans are
rarely there: only if the LRU evicted that span before the ones after it, which costs speed, not values).

The index keeps, per endpoint, an LRU of block hashes (capacity = the server's ``num_gpu_blocks`` when
scraped and the scorer's ``autoTune`` is on, else its ``lruCapacityPerServer``, 31,250 by default) and a
reverse map hash -> bitmask of endpoint slots, so matching a request is one dict lookup and one AND per
block whatever the number of endpoints. A hard global cap bounds memory: each endpoint's share is
``max_total_blocks / endpoints``.

``add(..., filler=n, tail_first=True)`` models the engine's own LRU more closely (the ``engineLru`` mode of
``prefix-cache-scorer``): a server's cache also holds blocks the index never hashes (a prompt's blocks past
the hashed first 256, and the generated tokens, which vLLM caches too), so ``filler`` placeholder entries
take their share of the endpoint's capacity and push older prefixes out as those blocks do on the server;
and the request's blocks are recorded last block first, so its head is the most recent entry and ages out
last, as vLLM frees a request's blocks tail first (a partly evicted prefix still matches its head).
A placeholder is one LRU entry standing for ``n`` blocks (a negative key: real hashes are unsigned; its
weight in ``_weight``), never matched, so a pick costs one entry however many tokens it generates.

Each LRU entry's value is its touch number (``seq``, one counter per index, increasing with every touch),
so an endpoint's LRU is in touch order. ``forget_through(address, seq)`` drops every entry touched at or
before ``seq`` (the engine's feedback: a block it lacked proves, under LRU, that everything it last saw
earlier is gone too), oldest first, in O(entries dropped).
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import xxhash

DEFAULT_BLOCK_TOKENS = 16
CHARS_PER_TOKEN = 4
MAX_PREFIX_BLOCKS = 256
DEFAULT_LRU_CAPACITY = 31_250
DEFAULT_MAX_TOTAL_BLOCKS = 1_000_000  # ~250 B per entry measured: ~250 MiB worst case

_pack = struct.Struct("<Q").pack
_h64 = xxhash.xxh64_intdigest
_blocks = struct.iter_unpack

# Memoized spans: a prompt's blocks are hashed ``SPAN_BLOCKS`` at a time through a bounded memo keyed by
# the chain's value before the span (the hash of everything in front of it, model included) and the span's
# bytes themselves (``chunk * SPAN_BLOCKS`` of them, so the block size is in the key too). A span's hashes
# are a function of exactly those, and a dict hit compares the bytes, so a hit returns the values the loop
# would compute for any input (a digest of the span as the key could be made to collide: xxh3 is not
# collision resistant). Prefix routing's traffic repeats its prefixes (a tenant's system prompt, a
# conversation's earlier turns): a hit costs one bytes hash and one look-up for the span instead of one
# call per block.
# The memo is bounded by an estimate of the bytes it holds, ``SPAN_BYTES`` per process: each entry counts
# its span's bytes plus ``_SPAN_ENTRY_COST`` (16 hashes, their list, the key, the dict slot; measured with
# tracemalloc in tests/scheduling/test_prefix.py), so ~4,000 spans at the default 64-byte blocks, fewer
# at larger blocks (each covers more of a prompt), whatever the mix of block sizes.
SPAN_BLOCKS = 16
SPAN_BYTES = 8 << 20
_SPAN_ENTRY_COST = 1024
_spans: OrderedDict[tuple[int, bytes], list[int]] = OrderedDict()
_span_bytes = 0  # the estimate for what ``_spans`` holds now


def block_hashes(
    model: str, data: str | bytes, chunk: int, max_blocks: int = MAX_PREFIX_BLOCKS, seed: int | None = None
) -> list[int]:
    """Chained hashes of the full ``chunk``-sized blocks of ``data`` (chars for text, bytes otherwise).
    ``seed``: the chain value to continue (the last hash of an earlier turn's blocks: a Responses
    follow-up's new input), else the model's."""
    if isinstance(data, str):
        raw = data[: chunk * max_blocks].encode("utf-8", "surrogatepass")
    else:
        raw = bytes(data[: chunk * max_blocks])  # (exact bytes: the memo's keys compare them)
    n = min(len(raw) // chunk, max_blocks)
    if not n:
        return []
    prev = _h64(model.encode("utf-8", "surrogatepass")) if seed is None else seed
    out: list[int] = []
    app = out.append
    fmt = f"{chunk}s"
    end = n * chunk
    size = chunk * SPAN_BLOCKS
    spans = _spans
    done = 0
    missed: tuple[int, bytes] | None = None
    for start in range(0, end - end % size, size):
        key = (prev, raw[start : start + size])
        got = spans.get(key)
        if got is None:
            # The first span this prompt misses is remembered once hashed (below). The spans after it
            # follow a chain value the memo did not have, so they are rarely in it (only where the LRU
            # dropped this span before later ones of its prefix: a cost in speed, not in values): they
            # are hashed block by block, unremembered. A prefix is learnt one span per request that
            # repeats it; a unique prompt adds one span.
            missed = key
            break
        spans.move_to_end(key)
        prev = got[-1]
        out += got
        done = start + size
    for (b,) in _blocks(fmt, raw[done:end]):
        prev = _h64(b + _pack(prev))
        app(prev)
    if missed is not None:
        first = done // chunk
        _remember(missed, out[first : first + SPAN_BLOCKS])
    return out


def _remember(key: tuple[int, bytes], hashes: list[int]) -> None:
    global _span_bytes
    spans = _spans
    spans[key] = hashes
    held = _span_bytes + len(key[1]) + _SPAN_ENTRY_COST
    while held > SPAN_BYTES and spans:
        (_, piece), _ = spans.popitem(last=False)  # the least recently used
        held -= len(piece) + _SPAN_ENTRY_COST
    _span_bytes = held


def clear_spans() -> None:
    """Forget the memoized spans (tests, benchmarks)."""
    global _span_bytes
    _spans.clear()
    _span_bytes = 0


@dataclass(slots=True)
class IndexStats:
    endpoints: int
    blocks: int  # (endpoint, block) entries
    unique_hashes: int


class PrefixIndex:
    def __init__(
        self, default_capacity: int = DEFAULT_LRU_CAPACITY, max_total_blocks: int = DEFAULT_MAX_TOTAL_BLOCKS
    ) -> None:
        self.default_capacity = default_capacity
        self.max_total_blocks = max_total_blocks
        self._slot: dict[str, int] = {}  # address -> bit position
        self._addr_of: dict[int, str] = {}
        self._bits: dict[str, int] = {}  # address -> 1 << slot (one shared int object per endpoint)
        self._free: list[int] = []
        # ``match``'s set-up for the last address list it was given (that list, the slots' mask, slot ->
        # position), kept while the list and the slots stay the same: the candidates change per refresh,
        # not per pick. A slot given or freed (``_ensure``, ``remove_endpoint``) drops it.
        self._match_addrs: list[str] = []
        self._match_alive = 0
        self._match_pos: dict[int, int] = {}
        self._lru: dict[str, OrderedDict[int, int]] = {}  # address -> hash -> touch number, oldest first
        self._seq = 0  # the last touch number given
        self._cap: dict[str, int] = {}
        self._rev: dict[int, int] = {}  # block hash -> bitmask of endpoint slots holding it
        self.total = 0
        self._filler_key = 0  # next placeholder key is one below this (negative: never a real hash)
        self._weight: dict[int, int] = {}  # placeholder key -> blocks it stands for
        self._size: dict[str, int] = {}  # address -> blocks its LRU stands for (placeholders by weight)
        # Told of every local insertion (``add``: address, hashes in the order the LRU touched them, oldest
        # first, and the placeholder weight), never of ``apply_remote`` ones: how ``--workers`` processes
        # share what each learned (the transport lives in gateway/, not here).
        self.listener: Callable[[str, Sequence[int], int], None] | None = None

    def __len__(self) -> int:
        return self.total

    def stats(self) -> IndexStats:
        return IndexStats(len(self._lru), self.total, len(self._rev))

    def endpoints(self) -> list[str]:
        return list(self._lru)

    def _limit(self, address: str) -> int:
        share = self.max_total_blocks // max(1, len(self._lru))
        return min(self._cap.get(address, self.default_capacity), share)

    def _ensure(self, address: str, capacity: int | None) -> OrderedDict[int, int]:
        lru = self._lru.get(address)
        if lru is None:
            slot = self._free.pop() if self._free else len(self._slot)
            self._slot[address] = slot
            self._match_addrs = []
            self._bits[address] = 1 << slot
            self._addr_of[slot] = address
            lru = self._lru[address] = OrderedDict()
            # A new endpoint lowers everyone's share of the global cap: shrink the others now.
            for other in list(self._lru):
                self._evict(other, self._limit(other))
        if capacity:
            self._cap[address] = capacity
        return lru

    def _evict(self, address: str, limit: int) -> None:
        lru = self._lru[address]
        size = self._size.get(address, len(lru))
        if size <= limit:
            return
        clear = ~(1 << self._slot[address])
        rev = self._rev
        while size > limit:
            h, seq = lru.popitem(last=False)
            if h < 0:  # a placeholder (``filler``): in the LRU only
                w = self._weight.pop(h)
                if size - w < limit:  # only part of it ages out: the rest stays oldest
                    lru[h] = seq
                    lru.move_to_end(h, last=False)
                    self._weight[h] = w - (size - limit)
                    size = limit
                    break
                size -= w
                self.total -= 1
                continue
            size -= 1
            self.total -= 1
            m = rev[h] & clear
            if m:
                rev[h] = m
            else:
                del rev[h]
        self._size[address] = size

    def add(
        self,
        address: str,
        hashes: Sequence[int],
        capacity: int | None = None,
        *,
        filler: int = 0,
        tail_first: bool = False,
    ) -> None:
        """Record that ``address`` now holds these blocks (most recently used), after ``filler`` blocks
        the index cannot name (older than them); ``tail_first``: the first block ends most recent."""
        lru = self._ensure(address, capacity)
        bit = self._bits[address]
        rev = self._rev
        added = 0
        grown = 0
        seq = self._seq
        if filler > 0:
            key = self._filler_key = self._filler_key - 1
            seq += 1
            lru[key] = seq
            self._weight[key] = filler
            added = 1
            grown = filler - 1
        touched = hashes[::-1] if tail_first else hashes
        to_end = lru.move_to_end  # (bound once: up to 256 blocks per pick)
        for h in touched:
            seq += 1
            if h in lru:
                lru[h] = seq
                to_end(h)
            else:
                lru[h] = seq
                cur = rev.get(h)
                # Sole holder: store the shared ``bit`` object itself rather than a fresh int per entry.
                rev[h] = bit if cur is None else cur | bit
                added += 1
        self._seq = seq
        self.total += added
        self._size[address] = self._size.get(address, 0) + added + grown
        self._evict(address, self._limit(address))
        if self.listener is not None:
            self.listener(address, touched, max(filler, 0))

    def apply_remote(self, address: str, hashes: Sequence[int], filler: int = 0) -> None:
        """Record blocks another gateway worker routed to ``address``, in the order its LRU touched them
        (oldest first), after ``filler`` placeholder blocks (not told to ``listener``: no echo)."""
        listener, self.listener = self.listener, None
        try:
            self.add(address, hashes, filler=filler)
        finally:
            self.listener = listener

    @property
    def seq(self) -> int:
        """The last touch number given: entries touched later have larger ones."""
        return self._seq

    def touched(self, address: str, hashes: Sequence[int]) -> list[int]:
        """The touch number of each of ``hashes`` on ``address`` (0 where it is not held)."""
        lru = self._lru.get(address)
        if lru is None:
            return [0] * len(hashes)
        get = lru.get
        return [get(h, 0) for h in hashes]

    def forget_through(
        self, address: str, seq: int, keep: tuple[Sequence[int], Sequence[int]] = ((), ())
    ) -> int:
        """Drop ``address``'s entries touched at or before ``seq`` (placeholders too), oldest first, but
        those whose touch number lies in one of the ``keep`` ranges (sorted firsts, lasts; inclusive);
        how many entries were dropped. O(entries looked at x log ranges): the LRU is in touch order."""
        lru = self._lru.get(address)
        if not lru:
            return 0
        clear = ~self._bits[address]
        rev, weight = self._rev, self._weight
        size = self._size.get(address, len(lru))
        firsts, lasts = keep
        kept: list[tuple[int, int]] = []
        dropped = 0
        while lru:
            h = next(iter(lru))
            t = lru[h]
            if t > seq:
                break
            del lru[h]
            if firsts:
                k = bisect_right(firsts, t) - 1
                if k >= 0 and t <= lasts[k]:
                    kept.append((h, t))
                    continue
            dropped += 1
            if h < 0:
                size -= weight.pop(h)
                continue
            size -= 1
            m = rev[h] & clear
            if m:
                rev[h] = m
            else:
                del rev[h]
        for h, t in reversed(kept):  # back at the old end, in their order
            lru[h] = t
            lru.move_to_end(h, last=False)
        self.total -= dropped
        self._size[address] = size
        return dropped

    def match(self, hashes: Sequence[int], addresses: Sequence[str]) -> list[int]:
        """Leading blocks of ``hashes`` each address holds, aligned with ``addresses``."""
        out = [0] * len(addresses)
        if addresses == self._match_addrs:  # (a list's ``==`` in C; a tuple never equals it: set up anew)
            alive, pos = self._match_alive, self._match_pos
        else:
            slot = self._slot
            pos = {}
            alive = 0
            for i, a in enumerate(addresses):
                s = slot.get(a)
                if s is not None:
                    alive |= 1 << s
                    pos[s] = i
            self._match_addrs, self._match_alive, self._match_pos = list(addresses), alive, pos
        if not alive:
            return out
        get = self._rev.get
        n = 0
        for h in hashes:
            m = get(h, 0) & alive
            if m != alive:
                dropped = alive & ~m
                while dropped:
                    low = dropped & -dropped
                    out[pos[low.bit_length() - 1]] = n
                    dropped ^= low
                alive = m
                if not alive:
                    return out
            n += 1
        while alive:
            low = alive & -alive
            out[pos[low.bit_length() - 1]] = n
            alive ^= low
        return out

    def fill(self, address: str) -> float:
        """The share of ``address``'s bound its entries take (placeholders by weight), 0 for one never
        added: how full this index believes that endpoint's cache is."""
        lru = self._lru.get(address)
        if lru is None:
            return 0.0
        size = self._size.get(address, len(lru))
        limit = self._limit(address)
        return min(1.0, size / limit) if limit > 0 else 1.0

    def hot(self, limit: int) -> list[int]:
        """Up to ``limit`` distinct block hashes, most recently used first, taken from every endpoint in turn
        (the pool aggregate's prefix summary for multi-cluster routing)."""
        out: dict[int, None] = {}
        iters = [reversed(lru) for lru in self._lru.values()]
        while iters and len(out) < limit:
            alive = []
            for it in iters:
                h = next(it, None)
                while h is not None and h < 0:  # placeholders name no prefix
                    h = next(it, None)
                if h is not None:
                    out[h] = None
                    alive.append(it)
                    if len(out) >= limit:
                        break
            iters = alive
        return list(out)

    def remove_endpoint(self, address: str) -> None:
        lru = self._lru.pop(address, None)
        if lru is None:
            return
        slot = self._slot.pop(address)
        self._match_addrs = []
        del self._addr_of[slot]
        del self._bits[address]
        self._cap.pop(address, None)
        clear = ~(1 << slot)
        rev = self._rev
        weight = self._weight
        self._size.pop(address, None)
        for h in lru:
            if h < 0:
                del weight[h]  # placeholder
                continue
            m = rev[h] & clear
            if m:
                rev[h] = m
            else:
                del rev[h]
        self.total -= len(lru)
        self._free.append(slot)

    def retain(self, addresses: set[str]) -> None:
        for a in [a for a in self._lru if a not in addresses]:
            self.remove_endpoint(a)

    def clear(self) -> None:
        for a in list(self._lru):
            self.remove_endpoint(a)
