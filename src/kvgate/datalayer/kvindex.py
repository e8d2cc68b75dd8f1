"""The bounded global block index fed by KV events: block key -> endpoints holding it.

Two keying modes:
- ``engine``: the key is the engine's own block hash (64-bit int); requests must be hashed exactly as the
  engine does (``kvgate.scheduling.blockhash``; needs a fixed PYTHONHASHSEED on the servers).
- ``tokens``: the key is kvgate's own chain hash over the event's ``token_ids`` (parent key + tokens), so
  routing works whatever hash algorithm or seed the engine uses, including the simulator's.
Either way removals arrive as engine hashes, so each endpoint keeps ``engine hash -> key``.

Besides what the engines report, the index can hold *pending* (speculative) entries: keys a picker has
just sent to an endpoint, which its engine will store once it has prefilled them. They count as held
until that endpoint's own events confirm them (``BlockStored``), drop them (``BlockRemoved``,
``AllBlocksCleared``) or their expiry passes, so concurrent requests for a new prefix follow the first.
"""

from __future__ import annotations

import logging
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import xxhash

from kvgate.datalayer.kvwire import BlockRemoved, BlockStored, EventBatch, KeyMode, KVEvent

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Token keys (mode "tokens"): kvgate's own chain hash, shared by the index and the scorer
# --------------------------------------------------------------------------------------------------

TOKENS_SEED = 0x6B76676174650001  # "kvgate" + version: the parent key of a first block


def token_block_key(parent: int, tokens: Sequence[int]) -> int:
    """Key of one full block given its parent's key: xxh3-64 over parent (LE u64) + tokens (LE u32)."""
    return xxhash.xxh3_64_intdigest(parent.to_bytes(8, "little") + array("I", tokens).tobytes())


def token_keys(token_ids: Sequence[int], block_size: int, max_blocks: int | None = None) -> list[int]:
    """Chain keys of the full blocks of a prompt (what ``tokens`` mode indexes): ``token_block_key``
    chained from ``TOKENS_SEED``, with the tokens packed once and hashed in one call per block (this runs
    on every pick, up to the scorer's match cap)."""
    n = len(token_ids) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    width = 4 * block_size
    packed = array("I", token_ids[: n * block_size]).tobytes()
    digest = xxhash.xxh3_64_intdigest
    keys: list[int] = []
    parent = TOKENS_SEED
    for off in range(0, n * width, width):
        parent = digest(parent.to_bytes(8, "little") + packed[off : off + width])
        keys.append(parent)
    return keys


# --------------------------------------------------------------------------------------------------
# Global block index
# --------------------------------------------------------------------------------------------------


def _purge_expired(pending: OrderedDict[int, float], now: float) -> None:
    """Drop the expired head of ``pending`` (kept in expiry order: one TTL per scorer)."""
    while pending:
        exp = next(iter(pending.values()))
        if exp > now:
            break
        pending.popitem(last=False)


@dataclass(slots=True)
class _EndpointBlocks:
    # engine hash -> key, oldest first (the bound evicts from the front)
    blocks: OrderedDict[int, int] = field(default_factory=OrderedDict)
    # key -> how many engine hashes of this endpoint map to it (only >1 in tokens mode)
    refs: dict[int, int] = field(default_factory=dict)
    capacity: int = 0
    block_size: int | None = None
    # key -> expiry (the picker's clock) of dispatch-time credit not yet confirmed, oldest first
    pending: OrderedDict[int, float] = field(default_factory=OrderedDict)


@dataclass(slots=True)
class IndexStats:
    stored: int = 0
    removed: int = 0
    cleared: int = 0
    evicted: int = 0  # dropped by the per-endpoint bound, not by the engine
    orphans: int = 0  # tokens mode: a stored block whose parent this index does not hold
    pending_added: int = 0
    pending_confirmed: int = 0  # a BlockStored arrived for a pending key
    pending_dropped: int = 0  # a BlockRemoved / AllBlocksCleared (or the cap) dropped a pending key


class BlockIndex:
    """Which endpoints hold which KV blocks, as their engines report it.

    Memory is bounded: each endpoint keeps at most ``capacity`` blocks (its ``num_gpu_blocks`` once known,
    else ``default_capacity``), evicting its oldest entries first, and at most ``pending_capacity``
    pending keys. A lookup is one walk over the prompt's keys, each step a set intersection with the
    key's holders (plus a pending check for the endpoints still matching that do not hold it).
    """

    def __init__(
        self,
        mode: KeyMode = "engine",
        default_capacity: int = 65_536,
        media: frozenset[str | None] = frozenset({None, "GPU"}),
        pending_capacity: int = 16_384,
    ) -> None:
        if mode not in ("engine", "tokens"):
            raise ValueError(f"unknown key mode {mode!r}")
        self.mode: KeyMode = mode
        # Only blocks in the engine's own KV cache count (not CPU/storage offload tiers), group 0 only.
        self.media = media
        self.default_capacity = default_capacity
        self._eps: dict[str, _EndpointBlocks] = {}
        self._owners: dict[int, set[str]] = {}
        # Pending entries live only in their endpoint's ``_EndpointBlocks.pending`` (no index by key): a
        # pick credits up to a whole prompt's keys, a lookup reads them for the few endpoints still matching.
        self.pending_capacity = pending_capacity
        self.stats = IndexStats()

    # -- bookkeeping -------------------------------------------------------------------------------

    def endpoints(self) -> list[str]:
        return list(self._eps)

    def num_blocks(self, endpoint: str | None = None) -> int:
        if endpoint is None:
            return sum(len(e.blocks) for e in self._eps.values())
        ep = self._eps.get(endpoint)
        return 0 if ep is None else len(ep.blocks)

    def num_keys(self) -> int:
        return len(self._owners)

    def num_pending(self, endpoint: str | None = None) -> int:
        """Pending entries held (expired ones included until a later add or the cap drops them)."""
        if endpoint is None:
            return sum(len(e.pending) for e in self._eps.values())
        ep = self._eps.get(endpoint)
        return 0 if ep is None else len(ep.pending)

    def block_size(self, endpoint: str) -> int | None:
        ep = self._eps.get(endpoint)
        return None if ep is None else ep.block_size

    def engine_hashes(self, endpoint: str) -> set[int]:
        ep = self._eps.get(endpoint)
        return set() if ep is None else set(ep.blocks)

    def capacity(self, endpoint: str) -> int:
        ep = self._eps.get(endpoint)
        return self.default_capacity if ep is None else ep.capacity

    def set_capacity(self, endpoint: str, capacity: int) -> None:
        """Bound one endpoint's entries (e.g. to its ``num_gpu_blocks``), evicting the oldest if over."""
        ep = self._ep(endpoint)
        ep.capacity = max(1, capacity)
        self._enforce(endpoint, ep)

    def _ep(self, endpoint: str) -> _EndpointBlocks:
        ep = self._eps.get(endpoint)
        if ep is None:
            ep = _EndpointBlocks(capacity=self.default_capacity)
            self._eps[endpoint] = ep
        return ep

    # -- updates -----------------------------------------------------------------------------------

    def apply(self, endpoint: str, batch: EventBatch | Iterable[KVEvent]) -> None:
        events = batch.events if isinstance(batch, EventBatch) else batch
        for ev in events:
            if ev.medium not in self.media:
                continue
            if isinstance(ev, BlockStored):
                if ev.group_idx in (None, 0):
                    self._store(endpoint, ev)
            elif isinstance(ev, BlockRemoved):
                if ev.group_idx in (None, 0):
                    self._remove(endpoint, ev.block_hashes)
            else:
                self.clear_endpoint(endpoint)

    def _store(self, endpoint: str, ev: BlockStored) -> None:
        ep = self._ep(endpoint)
        full = ev.block_size > 0 and len(ev.token_ids) == ev.block_size * len(ev.block_hashes)
        if full and ep.block_size is None:
            ep.block_size = ev.block_size
        if self.mode == "engine":
            for h in ev.block_hashes:
                self._add(endpoint, ep, h, h)
        else:
            # Partial-block entries (hash granularity finer than the block) can't be keyed by tokens.
            bs = ev.block_size
            if not full or bs != ep.block_size:
                self.stats.orphans += len(ev.block_hashes)
                return
            if ev.parent_block_hash is None:
                parent: int | None = TOKENS_SEED
            else:
                parent = ep.blocks.get(ev.parent_block_hash)
            if parent is None:
                self.stats.orphans += len(ev.block_hashes)
                return
            # The tokens packed once, each block's key hashed from its slice (``token_block_key``'s bytes).
            try:
                packed = array("I", ev.token_ids).tobytes()
            except (OverflowError, TypeError):  # (an id outside u32: ``token_block_key`` raises as before)
                packed = None
            if packed is None:
                for i, h in enumerate(ev.block_hashes):
                    parent = token_block_key(parent, ev.token_ids[i * bs : (i + 1) * bs])
                    self._add(endpoint, ep, h, parent)
            else:
                digest = xxhash.xxh3_64_intdigest
                width = 4 * bs
                for i, h in enumerate(ev.block_hashes):
                    parent = digest(parent.to_bytes(8, "little") + packed[i * width : (i + 1) * width])
                    self._add(endpoint, ep, h, parent)
        self._enforce(endpoint, ep)

    def _add(self, endpoint: str, ep: _EndpointBlocks, engine_hash: int, key: int) -> None:
        old = ep.blocks.get(engine_hash)
        if old is not None:
            ep.blocks.move_to_end(engine_hash)
            if old == key:
                return
            self._unref(endpoint, ep, old)
        ep.blocks[engine_hash] = key
        ep.refs[key] = ep.refs.get(key, 0) + 1
        self._owners.setdefault(key, set()).add(endpoint)
        self.stats.stored += 1
        if ep.pending and self._drop_pending(endpoint, ep, key):
            self.stats.pending_confirmed += 1

    def _unref(self, endpoint: str, ep: _EndpointBlocks, key: int) -> None:
        n = ep.refs.get(key, 0) - 1
        if n > 0:
            ep.refs[key] = n
            return
        ep.refs.pop(key, None)
        owners = self._owners.get(key)
        if owners is not None:
            owners.discard(endpoint)
            if not owners:
                del self._owners[key]

    def _remove(self, endpoint: str, hashes: Iterable[int]) -> None:
        ep = self._eps.get(endpoint)
        if ep is None:
            return
        for h in hashes:
            key = ep.blocks.pop(h, None)
            if key is not None:
                self._unref(endpoint, ep, key)
                self.stats.removed += 1
            # The engine's eviction beats our guess: no pending credit for that block either.
            if ep.pending and self._drop_pending(endpoint, ep, h if key is None else key):
                self.stats.pending_dropped += 1

    def _enforce(self, endpoint: str, ep: _EndpointBlocks) -> None:
        while len(ep.blocks) > ep.capacity:
            _, key = ep.blocks.popitem(last=False)
            self._unref(endpoint, ep, key)
            self.stats.evicted += 1

    def clear_endpoint(self, endpoint: str) -> None:
        """Forget everything one endpoint holds (AllBlocksCleared, or a resync after a gap)."""
        ep = self._eps.get(endpoint)
        if ep is None:
            return
        for key in ep.refs:
            owners = self._owners.get(key)
            if owners is not None:
                owners.discard(endpoint)
                if not owners:
                    del self._owners[key]
        ep.blocks.clear()
        ep.refs.clear()
        self.stats.pending_dropped += len(ep.pending)
        ep.pending.clear()
        self.stats.cleared += 1

    def remove_endpoint(self, endpoint: str) -> None:
        """Purge an endpoint that left the pool."""
        self.clear_endpoint(endpoint)
        self._eps.pop(endpoint, None)

    def retain(self, endpoints: Iterable[str]) -> None:
        """Purge every endpoint not in ``endpoints``."""
        keep = set(endpoints)
        for name in [e for e in self._eps if e not in keep]:
            self.remove_endpoint(name)

    # -- pending (dispatch-time) entries ------------------------------------------------------------

    def add_pending(self, endpoint: str, keys: Iterable[int], expires: float, now: float) -> int:
        """Credit ``endpoint`` with ``keys`` until ``expires`` (or its events confirm or drop them).

        Keys it already holds by its own report are skipped (nothing to add). Returns how many were added.
        """
        ep = self._ep(endpoint)
        pending = ep.pending
        _purge_expired(pending, now)
        refs = ep.refs
        move = pending.move_to_end
        added = 0
        for key in keys:
            if key in refs:
                continue
            pending[key] = expires
            move(key)
            added += 1
        self.stats.pending_added += added
        over = len(pending) - self.pending_capacity
        if over > 0:
            pop = pending.popitem
            for _ in range(over):
                pop(last=False)
            self.stats.pending_dropped += over
        return added

    def fill(self, endpoint: str, now: float | None = None) -> float:
        """The share of ``endpoint``'s capacity its reported blocks and unexpired pending credit take
        (expired credit is purged here, as ``add_pending`` does; ``now`` None: all of it counts), 0 for
        one never reported: how full its engine's cache is, as far as this index knows."""
        ep = self._eps.get(endpoint)
        if ep is None:
            return 0.0
        if now is not None and ep.pending:
            _purge_expired(ep.pending, now)
        return min(1.0, (len(ep.blocks) + len(ep.pending)) / max(1, ep.capacity))

    def _drop_pending(self, endpoint: str, ep: _EndpointBlocks, key: int) -> bool:
        return ep.pending.pop(key, None) is not None

    # -- lookups -----------------------------------------------------------------------------------

    def holders(self, key: int) -> frozenset[str]:
        return frozenset(self._owners.get(key, ()))

    def longest_prefix(
        self, keys: Sequence[int], endpoints: Iterable[str], now: float | None = None
    ) -> dict[str, int]:
        """Per endpoint, how many leading ``keys`` it holds (vLLM reuses only an unbroken prefix).

        With ``now``, pending entries that expire after ``now`` count as held too.
        """
        alive = set(endpoints)
        result = dict.fromkeys(alive, 0)
        # The pending entries of the endpoints that have any: checked only for those still matching
        # that do not hold the key by their own report.
        pending: dict[str, OrderedDict[int, float]] = {}
        if now is not None:
            for e in alive:
                ep = self._eps.get(e)
                if ep is not None and ep.pending:
                    pending[e] = ep.pending
        t = 0.0 if now is None else now
        all_owners = self._owners
        for i, key in enumerate(keys):
            owners = all_owners.get(key)
            if owners is not None and alive <= owners:
                continue  # everyone still matching holds it
            kept = alive & owners if owners else set()
            if pending:
                for e in alive:
                    if e not in kept:
                        p = pending.get(e)
                        if p is not None and p.get(key, t) > t:
                            kept.add(e)
            if len(kept) < len(alive):  # (kept is a subset of alive)
                for e in alive - kept:  # their match ends here: i leading keys
                    result[e] = i
                if not kept:
                    return result
            alive = kept
        for e in alive:
            result[e] = len(keys)
        return result
