"""A paged KV cache with prefix caching, after vLLM V1's block pool.

Blocks are plain ints with parallel arrays (ref counts, hashes) rather than objects, so admission and
freeing cost O(blocks) with small constants. A full block of tokens gets a 64-bit hash chained on its
parent's hash (``hash(parent, token ids, lora)``); a cached block whose ref count drops to zero stays
findable by hash until it is evicted. Free blocks sit in one LRU queue (O(1) revival of a free cached
block on a prefix hit, O(1) pop of the oldest, see :class:`BlockPool`); allocation evicts from its head,
like vLLM's ``FreeKVCacheBlockQueue``.

KV events (``BlockStored``, ``BlockRemoved``, ``AllBlocksCleared``) are kvgate's one set of KV-event types,
``kvgate.datalayer.kvwire`` (the only data-layer module the simulator imports): what the pool emits is what
the gateway's block index consumes; ``sim.kvevents`` publishes them in vLLM's msgpack wire format.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import xxhash

# The pool's events, re-exported for the engine and its tests.
from kvgate.datalayer.kvwire import AllBlocksCleared as AllBlocksCleared
from kvgate.datalayer.kvwire import BlockRemoved as BlockRemoved
from kvgate.datalayer.kvwire import BlockStored as BlockStored
from kvgate.datalayer.kvwire import KVEvent as KVEvent

GPU = "GPU"  # every simulated block lives in the engine's own KV cache

# hash(parent block hash or None, the block's token ids, lora name or None) -> 64-bit int
BlockHasher = Callable[[int | None, Sequence[int], str | None], int]


def xxhash64_block(parent: int | None, token_ids: Sequence[int], lora: str | None) -> int:
    """Default block hash: xxh64 over the parent hash (8 bytes LE, 0 for none), the token ids (int64 LE)
    and the LoRA name."""
    data = (parent or 0).to_bytes(8, "little") + _int64s(token_ids)
    if lora:
        data += lora.encode()
    return xxhash.xxh64_intdigest(data)


def _int64s(token_ids: Sequence[int]) -> bytes:
    # int64 little-endian; struct.pack is ~3x faster than array("q", ...) from a list of ints.
    return struct.pack(f"<{len(token_ids)}q", *token_ids)


def xxhash64_chain(
    parent: int | None, token_ids: Sequence[int], block_size: int, lora: str | None
) -> list[int]:
    """``xxhash64_block`` over consecutive full blocks of ``token_ids``, each chained on the previous one:
    the same hashes, with one conversion of the tokens to bytes instead of one per block."""
    raw = _int64s(token_ids)
    width = block_size * 8
    suffix = lora.encode() if lora else b""
    out: list[int] = []
    h = parent or 0
    digest = xxhash.xxh64_intdigest
    for off in range(0, len(raw) - width + 1, width):
        h = digest(h.to_bytes(8, "little") + raw[off : off + width] + suffix)
        out.append(h)
    return out


def lora_int_id(lora: str | None) -> int | None:
    """A stable positive int for an adapter name (vLLM events carry ``lora_id``; the sim only has names)."""
    if not lora:
        return None
    return xxhash.xxh32_intdigest(lora.encode()) & 0x7FFFFFFF or 1


@dataclass(slots=True)
class BlockPool:
    """``num_blocks`` blocks of ``block_size`` tokens; ``events`` collects KV events until drained.

    The free queue is vLLM's LRU order (oldest first) kept cheaply for hundreds of pools in one process:
    blocks never used yet are a counter (``_fresh``: they leave in id order, before any freed block, as in
    a queue that starts with every block), and freed blocks go to a deque. Reviving a free cached block
    leaves its deque entry behind as stale instead of deleting it from the middle; ``_entries`` counts a
    block's entries so a pop can tell the block's latest entry (valid if the block is still free) from older
    ones. The deque is compacted when stale entries outnumber the blocks, so memory stays O(blocks).
    ``ref`` / ``block_hash`` cover only the blocks handed out so far (they grow with ``_fresh``).
    """

    num_blocks: int
    block_size: int
    enable_caching: bool = True
    emit_events: bool = False
    ref: list[int] = field(init=False, default_factory=list)
    block_hash: list[int | None] = field(init=False, default_factory=list)
    cached: dict[int, int] = field(init=False, default_factory=dict)  # hash -> block id
    events: list[KVEvent] = field(init=False, default_factory=list)
    evictions: int = field(init=False, default=0)
    _fresh: int = field(init=False, default=0)  # blocks 0.._fresh-1 have been handed out at least once
    _queue: deque[int] = field(init=False, default_factory=deque)  # freed blocks, oldest first (+ stale)
    _entries: list[int] = field(init=False, default_factory=list)  # a block's entries in ``_queue``
    _nfree: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._nfree = self.num_blocks

    @property
    def num_free(self) -> int:
        """Blocks with no user (cached or not): what an allocation can take."""
        return self._nfree

    @property
    def usage(self) -> float:
        """vLLM's ``kv_cache_usage_perc``: blocks in use by requests / all blocks."""
        return 1.0 - self._nfree / self.num_blocks if self.num_blocks else 0.0

    def free_order(self) -> list[int]:
        """The free queue, oldest (next to be taken) first. O(blocks): for tests and debugging."""
        ref, entries = self.ref, list(self._entries)
        out = list(range(self._fresh, self.num_blocks))  # never used: ahead of every freed block
        for b in self._queue:
            entries[b] -= 1
            if not entries[b] and not ref[b]:
                out.append(b)
        return out

    def lookup(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """The longest run of cached blocks matching ``hashes[:max_blocks]`` from the start."""
        hit: list[int] = []
        if not self.enable_caching:
            return hit
        cached = self.cached
        for i in range(min(max_blocks, len(hashes))):
            bid = cached.get(hashes[i])
            if bid is None:
                break
            hit.append(bid)
        return hit

    def num_reviving(self, block_ids: Sequence[int]) -> int:
        """How many of these (hit) blocks are free now, i.e. would leave the free queue when touched."""
        ref = self.ref
        return sum(1 for b in block_ids if ref[b] == 0)

    def touch(self, block_ids: Sequence[int]) -> None:
        ref = self.ref
        for b in block_ids:
            if ref[b] == 0:
                self._nfree -= 1  # its queue entry goes stale
            ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks from the head of the free queue (caller checked ``num_free``), evicting cached
        ones."""
        self._nfree -= n
        fresh = self._fresh
        take = self.num_blocks - fresh
        if take > n:
            take = n
        if take > 0:
            # Never-used blocks come first (they head the queue): no hashes to evict.
            self._fresh = fresh + take
            self.ref.extend([1] * take)
            self.block_hash.extend([None] * take)
            self._entries.extend([0] * take)
            out = list(range(fresh, fresh + take))
            if take == n:
                return out
            n -= take
        else:
            out = []
        queue, ref, block_hash, entries = self._queue, self.ref, self.block_hash, self._entries
        pop = queue.popleft
        removed: list[int] = []
        while n:
            b = pop()
            c = entries[b] - 1
            entries[b] = c
            if c or ref[b]:
                continue  # stale: the block was revived, or freed again later (a newer entry exists)
            h = block_hash[b]
            if h is not None:
                block_hash[b] = None
                if self.cached.get(h) == b:
                    del self.cached[h]
                removed.append(h)
            ref[b] = 1
            out.append(b)
            n -= 1
        if removed:
            self.evictions += len(removed)
            if self.emit_events:
                self.events.append(BlockRemoved(removed, GPU))
        return out

    def allocate_one(self) -> int:
        """``allocate(1)[0]``, cheaper for the common case (a decode crossing into a new block)."""
        b = self._fresh
        if b < self.num_blocks:
            self._nfree -= 1
            self._fresh = b + 1
            self.ref.append(1)
            self.block_hash.append(None)
            self._entries.append(0)
            return b
        return self.allocate(1)[0]

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        """Drop one reference from each block; blocks reaching zero join the free queue's tail, the request's
        last block first so that its tail is evicted before its (more shareable) head."""
        ref, entries, queue = self.ref, self._entries, self._queue
        freed = 0
        for b in reversed(block_ids):
            r = ref[b] - 1
            ref[b] = r
            if r == 0:
                queue.append(b)
                entries[b] += 1
                freed += 1
        self._nfree += freed
        if len(queue) > 2 * self.num_blocks + 64:
            self._compact()

    def _compact(self) -> None:
        """Drop stale queue entries (amortised O(1) per free: runs after >= num_blocks new entries)."""
        ref, entries = self.ref, self._entries
        keep: deque[int] = deque()
        for b in self._queue:
            entries[b] -= 1
            if not entries[b] and not ref[b]:
                keep.append(b)
        for b in keep:
            entries[b] = 1
        self._queue = keep

    def cache_blocks(
        self,
        block_ids: Sequence[int],
        hashes: Sequence[int],
        start: int,
        end: int,
        tokens: Callable[[int, int], list[int]],
        lora: str | None,
    ) -> None:
        """Register full blocks ``start..end-1`` of a request (``block_ids[i]`` holds tokens of block ``i``,
        hash ``hashes[i]``). A block whose hash is already cached elsewhere stays an uncached duplicate.
        Emits one ``BlockStored`` per run of newly registered blocks, as vLLM batches them."""
        if not self.enable_caching:
            return
        cached, block_hash, bs = self.cached, self.block_hash, self.block_size
        if end - start == 1 and not self.emit_events:  # a decode filling one block: the common case
            b, h = block_ids[start], hashes[start]
            if block_hash[b] is None and h not in cached:
                block_hash[b] = h
                cached[h] = b
            return
        run_start = -1
        for i in range(start, end):
            b, h = block_ids[i], hashes[i]
            new = block_hash[b] is None and h not in cached
            if new:
                block_hash[b] = h
                cached[h] = b
                if run_start < 0:
                    run_start = i
            if self.emit_events and run_start >= 0 and (not new or i == end - 1):
                last = i + 1 if new else i
                self.events.append(
                    BlockStored(
                        block_hashes=list(hashes[run_start:last]),
                        parent_block_hash=hashes[run_start - 1] if run_start > 0 else None,
                        token_ids=tokens(run_start * bs, last * bs),
                        block_size=bs,
                        lora_id=lora_int_id(lora),
                        medium=GPU,
                        lora_name=lora,
                    )
                )
                run_start = -1
            elif not new:
                run_start = -1

    def reset(self) -> bool:
        """Forget every cached hash (vLLM's ``reset_prefix_cache``); refused while any block is in use."""
        if self._nfree != self.num_blocks:
            return False
        self.cached.clear()
        self.block_hash = [None] * len(self.ref)
        if self.emit_events:
            self.events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KVEvent]:
        ev, self.events = self.events, []
        return ev
