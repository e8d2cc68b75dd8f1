"""vLLM KV-cache events: wire decoding, a bounded global block index, and ZMQ subscribers.

vLLM (``--kv-events-config``) publishes on ZMQ PUB multipart frames ``[topic, seq (8-byte big-endian),
payload]``; the payload is msgpack ``EventBatch = [ts, events, data_parallel_rank]``. Events come in two
encodings: the map form ``{"type": "BlockStored", ...}`` (vLLM 0.32 here) and the older msgspec tagged-array
form ``["BlockStored", block_hashes, parent, token_ids, block_size, lora_id, medium, ...]``. Both decode to
the same dataclasses below.

The index maps a block *key* to the endpoints that hold it. Two keying modes:
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

import asyncio
import contextlib
import logging
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import xxhash

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import EndpointStore, StoreChange

log = logging.getLogger(__name__)

KeyMode = Literal["engine", "tokens"]

# vLLM's replay socket ends a replay with sequence number -1.
_END_SEQ = (-1).to_bytes(8, "big", signed=True)
_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = None
    group_idx: int | None = None  # KV-cache group (hybrid models have several; Llama has group 0)


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]
    medium: str | None = None
    group_idx: int | None = None


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    medium: str | None = None


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    ts: float
    events: tuple[KVEvent, ...]
    data_parallel_rank: int | None = None


class DecodeError(ValueError):
    """A payload that is not a vLLM KV event batch."""


_decoder = msgspec.msgpack.Decoder()


def external_hash(h: Any) -> int:
    """An engine block hash as a 64-bit int.

    vLLM sends ints (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``, the default) made from the last 8 bytes of the
    digest, big-endian; with that switched off it sends the raw digest bytes, reduced here the same way.
    """
    if isinstance(h, bool):
        raise DecodeError("bool is not a block hash")
    if isinstance(h, int):
        return h & _MASK64
    if isinstance(h, bytes | bytearray | memoryview):
        return int.from_bytes(bytes(h)[-8:], "big")
    raise DecodeError(f"bad block hash {h!r}")


def _opt_hash(h: Any) -> int | None:
    return None if h is None else external_hash(h)


def _hashes(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list | tuple):
        raise DecodeError("block_hashes must be a list")
    return tuple(external_hash(h) for h in v)


def _ints(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list | tuple) or not all(isinstance(t, int) for t in v):
        raise DecodeError("token_ids must be a list of ints")
    return tuple(v)


def _opt(seq: Sequence[Any], i: int) -> Any:
    return seq[i] if len(seq) > i else None


def _event_from_map(m: dict[str, Any]) -> KVEvent | None:
    kind = m.get("type")
    if kind == "BlockStored":
        return BlockStored(
            block_hashes=_hashes(m.get("block_hashes")),
            parent_block_hash=_opt_hash(m.get("parent_block_hash")),
            token_ids=_ints(m.get("token_ids", [])),
            block_size=int(m.get("block_size") or 0),
            lora_id=m.get("lora_id"),
            medium=m.get("medium"),
            group_idx=m.get("group_idx"),
        )
    if kind == "BlockRemoved":
        return BlockRemoved(
            block_hashes=_hashes(m.get("block_hashes")), medium=m.get("medium"), group_idx=m.get("group_idx")
        )
    if kind == "AllBlocksCleared":
        return AllBlocksCleared(medium=m.get("medium"))
    return None  # an event type this version does not know: skip it, keep the rest of the batch


def _event_from_array(a: list[Any]) -> KVEvent | None:
    if not a or not isinstance(a[0], str):
        raise DecodeError("tagged event without a tag")
    kind = a[0]
    if kind == "BlockStored":
        if len(a) < 5:
            raise DecodeError("short BlockStored")
        return BlockStored(
            block_hashes=_hashes(a[1]),
            parent_block_hash=_opt_hash(a[2]),
            token_ids=_ints(a[3]),
            block_size=int(a[4] or 0),
            lora_id=_opt(a, 5),
            medium=_opt(a, 6),
        )
    if kind == "BlockRemoved":
        if len(a) < 2:
            raise DecodeError("short BlockRemoved")
        return BlockRemoved(block_hashes=_hashes(a[1]), medium=_opt(a, 2))
    if kind == "AllBlocksCleared":
        return AllBlocksCleared(medium=_opt(a, 1))
    return None


def decode_batch(payload: bytes) -> EventBatch:
    """Decode one msgpack ``EventBatch`` payload (either event encoding)."""
    try:
        raw = _decoder.decode(payload)
    except msgspec.DecodeError as e:
        raise DecodeError(str(e)) from e
    if isinstance(raw, dict):  # a batch encoded as a map (not seen from vLLM, accepted anyway)
        raw = [raw.get("ts", 0.0), raw.get("events", []), raw.get("data_parallel_rank")]
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[1], list):
        raise DecodeError("not an EventBatch [ts, events, dp_rank]")
    events: list[KVEvent] = []
    for ev in raw[1]:
        if isinstance(ev, dict):
            parsed = _event_from_map(ev)
        elif isinstance(ev, list):
            parsed = _event_from_array(ev)
        else:
            raise DecodeError(f"bad event {ev!r}")
        if parsed is not None:
            events.append(parsed)
    ts = raw[0]
    dp = raw[2] if len(raw) > 2 else None
    return EventBatch(ts=float(ts or 0.0), events=tuple(events), data_parallel_rank=dp)


# --------------------------------------------------------------------------------------------------
# Token keys (mode "tokens"): kvgate's own chain hash, shared by the index and the scorer
# --------------------------------------------------------------------------------------------------

TOKENS_SEED = 0x6B76676174650001  # "kvgate" + version: the parent key of a first block


def token_block_key(parent: int, tokens: Sequence[int]) -> int:
    """Key of one full block given its parent's key: xxh3-64 over parent (LE u64) + tokens (LE u32)."""
    h = xxhash.xxh3_64(parent.to_bytes(8, "little"))
    h.update(array("I", tokens).tobytes())
    return h.intdigest()


def token_keys(token_ids: Sequence[int], block_size: int, max_blocks: int | None = None) -> list[int]:
    """Chain keys of the full blocks of a prompt (what ``tokens`` mode indexes)."""
    n = len(token_ids) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    keys: list[int] = []
    parent = TOKENS_SEED
    for i in range(n):
        parent = token_block_key(parent, token_ids[i * block_size : (i + 1) * block_size])
        keys.append(parent)
    return keys


# --------------------------------------------------------------------------------------------------
# Global block index
# --------------------------------------------------------------------------------------------------


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
    pending keys. Lookups cost O(blocks x endpoints).
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
        # key -> {endpoint: expiry}: the pending entries of every endpoint, for lookups
        self._pending: dict[int, dict[str, float]] = {}
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
            for i, h in enumerate(ev.block_hashes):
                parent = token_block_key(parent, ev.token_ids[i * bs : (i + 1) * bs])
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
        for key in ep.pending:
            self._unpend(endpoint, key)
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
        while pending:  # entries are kept in expiry order (one TTL per scorer): purge the expired head
            key, exp = next(iter(pending.items()))
            if exp > now:
                break
            pending.popitem(last=False)
            self._unpend(endpoint, key)
        added = 0
        for key in keys:
            if key in ep.refs:
                continue
            pending[key] = expires
            pending.move_to_end(key)
            self._pending.setdefault(key, {})[endpoint] = expires
            added += 1
        self.stats.pending_added += added
        while len(pending) > self.pending_capacity:
            key, _ = pending.popitem(last=False)
            self._unpend(endpoint, key)
            self.stats.pending_dropped += 1
        return added

    def _drop_pending(self, endpoint: str, ep: _EndpointBlocks, key: int) -> bool:
        if ep.pending.pop(key, None) is None:
            return False
        self._unpend(endpoint, key)
        return True

    def _unpend(self, endpoint: str, key: int) -> None:
        holders = self._pending.get(key)
        if holders is not None:
            holders.pop(endpoint, None)
            if not holders:
                del self._pending[key]

    # -- lookups -----------------------------------------------------------------------------------

    def holders(self, key: int) -> frozenset[str]:
        return frozenset(self._owners.get(key, ()))

    def longest_prefix(
        self, keys: Sequence[int], endpoints: Iterable[str], now: float | None = None
    ) -> dict[str, int]:
        """Per endpoint, how many leading ``keys`` it holds (vLLM reuses only an unbroken prefix).

        With ``now``, pending entries that expire after ``now`` count as held too.
        """
        alive = {e for e in endpoints}
        result = dict.fromkeys(alive, 0)
        pending = self._pending if now is not None else None
        t = 0.0 if now is None else now
        for i, key in enumerate(keys):
            if not alive:
                break
            owners = self._owners.get(key)
            pend = pending.get(key) if pending else None
            if pend:
                mine = owners or ()
                alive = {e for e in alive if e in mine or (e in pend and pend[e] > t)}
            elif not owners:
                break
            else:
                alive &= owners
            for e in alive:
                result[e] = i + 1
        return result


# --------------------------------------------------------------------------------------------------
# ZMQ subscribers
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SubscriberStats:
    batches: int = 0
    events: int = 0
    gaps: int = 0
    replayed: int = 0
    resyncs: int = 0
    restarts: int = 0
    decode_errors: int = 0
    last_seq: int | None = None


class KVEventSubscriber:
    """Follows one endpoint's KV-event stream into a ``BlockIndex``.

    ``zmq_endpoint`` is where the engine publishes. vLLM binds ``tcp://*:PORT`` (then we connect) but
    *connects* to a concrete address (then we must bind), so ``bind`` says which side we are.
    On a sequence gap it asks the engine's replay socket (``replay_endpoint``) for the missing batches;
    without one, or if the replay cannot cover the gap, it clears that endpoint's entries (the index may
    then under-report, never over-report, what the engine holds).
    """

    def __init__(
        self,
        index: BlockIndex,
        endpoint: str,
        zmq_endpoint: str,
        *,
        bind: bool = False,
        topic: bytes = b"",
        replay_endpoint: str | None = None,
        replay_timeout: float = 1.0,
    ) -> None:
        self.index = index
        self.endpoint = endpoint
        self.zmq_endpoint = zmq_endpoint
        self.bind = bind
        self.topic = topic
        self.replay_endpoint = replay_endpoint
        self.replay_timeout = replay_timeout
        self.stats = SubscriberStats()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    # -- message handling (socket-free, so tests can drive it directly) ----------------------------

    def handle(self, seq: int, payload: bytes) -> None:
        """Apply one received batch (no replay: a gap resyncs by clearing)."""
        if self._check_gap(seq) == "gap":
            self._resync()
        self._apply(seq, payload)

    def _check_gap(self, seq: int) -> Literal["ok", "gap", "restart"]:
        last = self.stats.last_seq
        if last is None or seq == last + 1:
            return "ok"
        if seq <= last:
            # The publisher restarted (sequence numbers start again): its cache restarted empty too.
            self.stats.restarts += 1
            self.index.clear_endpoint(self.endpoint)
            return "restart"
        self.stats.gaps += 1
        return "gap"

    def _resync(self) -> None:
        self.stats.resyncs += 1
        self.index.clear_endpoint(self.endpoint)

    def _apply(self, seq: int, payload: bytes) -> None:
        self.stats.last_seq = seq
        try:
            batch = decode_batch(payload)
        except DecodeError as e:
            # Can't tell what we missed: same as a gap.
            self.stats.decode_errors += 1
            log.warning("kv events from %s: undecodable batch %d: %s", self.endpoint, seq, e)
            self._resync()
            return
        self.stats.batches += 1
        self.stats.events += len(batch.events)
        self.index.apply(self.endpoint, batch)

    # -- socket loop -------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"kvevents:{self.endpoint}")
        return self._task

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        import zmq
        import zmq.asyncio

        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        try:
            if self.bind:
                sock.bind(self.zmq_endpoint)
            else:
                sock.connect(self.zmq_endpoint)
            self._ready.set()
            while True:
                frames = await sock.recv_multipart()
                if len(frames) < 3 or len(frames[-2]) != 8:
                    self.stats.decode_errors += 1
                    continue
                seq = int.from_bytes(frames[-2], "big", signed=True)
                payload = frames[-1]
                if self.stats.last_seq is None and seq > 0 and self.replay_endpoint is not None:
                    # Joined late (vLLM's PUB connects to us with a backoff): fetch what we missed.
                    await self._replay(0, seq, partial_ok=True)
                verdict = self._check_gap(seq)
                if verdict == "gap" and not await self._replay(self._next_seq(), seq):
                    self._resync()
                self._apply(seq, payload)
        finally:
            sock.close(0)

    def _next_seq(self) -> int:
        return 0 if self.stats.last_seq is None else self.stats.last_seq + 1

    async def _replay(self, want: int, upto: int, partial_ok: bool = False) -> bool:
        """Fetch batches [want, upto) from the replay socket; True if they were all applied.

        ``partial_ok`` (joining late, nothing known yet): apply the longest run that ends at ``upto - 1``
        even if the engine's buffer no longer reaches back to ``want``.
        """
        if self.replay_endpoint is None:
            return False
        import zmq
        import zmq.asyncio

        ctx = zmq.asyncio.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        got: list[tuple[int, bytes]] = []
        try:
            sock.connect(self.replay_endpoint)
            # vLLM's ROUTER reads [identity, b"", start_seq]; DEALER supplies the identity.
            await sock.send_multipart([b"", want.to_bytes(8, "big")])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.replay_timeout
            while True:
                left = deadline - loop.time()
                if left <= 0 or not await sock.poll(int(left * 1000)):
                    return False
                frames = await sock.recv_multipart()
                if len(frames) < 2:
                    return False
                seq_b, payload = frames[-2], frames[-1]
                if seq_b == _END_SEQ:
                    break
                seq = int.from_bytes(seq_b, "big", signed=True)
                if want <= seq < upto:
                    got.append((seq, payload))
        finally:
            sock.close(0)
        got.sort()
        if partial_ok:
            start = upto
            for s, _ in reversed(got):
                if s != start - 1:
                    break
                start = s
            got = [(s, p) for s, p in got if s >= start]
        elif [s for s, _ in got] != list(range(want, upto)):
            return False  # the engine's buffer no longer reaches back to our gap
        for seq, payload in got:
            self._apply(seq, payload)
        self.stats.replayed += len(got)
        return True


class KVEventsManager:
    """One subscriber per endpoint over a shared index; endpoints that vanish are purged."""

    def __init__(self, index: BlockIndex) -> None:
        self.index = index
        self.subscribers: dict[str, KVEventSubscriber] = {}

    async def add(
        self,
        endpoint: str,
        zmq_endpoint: str,
        *,
        bind: bool = False,
        replay_endpoint: str | None = None,
        topic: bytes = b"",
    ) -> KVEventSubscriber:
        old = self.subscribers.get(endpoint)
        if old is not None:
            return old
        sub = KVEventSubscriber(
            self.index, endpoint, zmq_endpoint, bind=bind, replay_endpoint=replay_endpoint, topic=topic
        )
        self.subscribers[endpoint] = sub
        sub.start()
        async with asyncio.timeout(5.0):
            await sub.wait_ready()
        return sub

    def ensure(
        self, endpoint: str, zmq_endpoint: str, *, bind: bool = False, replay_endpoint: str | None = None
    ) -> KVEventSubscriber:
        """Like ``add`` but from sync code inside a running loop: starts the task, does not wait."""
        sub = self.subscribers.get(endpoint)
        if sub is None:
            sub = KVEventSubscriber(
                self.index, endpoint, zmq_endpoint, bind=bind, replay_endpoint=replay_endpoint
            )
            self.subscribers[endpoint] = sub
            sub.start()
        return sub

    def drop(self, endpoint: str) -> None:
        """Sync removal: purge the index now, cancel the subscriber's task (its socket closes as it ends)."""
        sub = self.subscribers.pop(endpoint, None)
        if sub is not None and sub._task is not None:
            sub._task.cancel()
            sub._task = None
        self.index.remove_endpoint(endpoint)

    async def remove(self, endpoint: str) -> None:
        sub = self.subscribers.pop(endpoint, None)
        if sub is not None:
            await sub.stop()
        self.index.remove_endpoint(endpoint)

    async def sync(self, endpoints: Iterable[str]) -> None:
        """Drop subscribers and index entries of endpoints no longer in the pool."""
        keep = set(endpoints)
        for name in [e for e in self.subscribers if e not in keep]:
            await self.remove(name)
        self.index.retain(keep)

    async def close(self) -> None:
        for name in list(self.subscribers):
            sub = self.subscribers.pop(name)
            await sub.stop()


# (events address, replay address or None) of an endpoint's KV events, or None when it publishes none.
EventSourceResolver = Callable[[Endpoint], "tuple[str, str | None] | None"]


class KVEventSources:
    """The data layer's KV-event feed for one store, started and stopped beside its ``MetricsScraper``.

    Subscribes ``manager`` to every endpoint of ``store`` that ``resolve`` gives an event source, then
    follows the store: an added endpoint is subscribed, a removed one dropped (its blocks purged). The
    scheduler only reads the index; nothing is subscribed on a pick.
    """

    def __init__(
        self,
        store: EndpointStore,
        manager: KVEventsManager,
        resolve: EventSourceResolver,
        *,
        bind: bool = False,
    ) -> None:
        self.store = store
        self.manager = manager
        self.resolve = resolve
        self.bind = bind
        self._running = False

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self.store.add_listener(self._on_change)
        for ep in self.store.all():
            src = self.resolve(ep)
            if src is not None:
                await self.manager.add(ep.address, src[0], bind=self.bind, replay_endpoint=src[1])

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self.store.remove_listener(self._on_change)
        for ep in self.store.all():
            if ep.address in self.manager.subscribers:
                await self.manager.remove(ep.address)

    def _on_change(self, change: StoreChange) -> None:
        ep = change.endpoint
        if change.kind == "removed":
            self.manager.drop(ep.address)
        elif change.kind == "added" and self._running:
            src = self.resolve(ep)
            if src is not None:
                self.manager.ensure(ep.address, src[0], bind=self.bind, replay_endpoint=src[1])
