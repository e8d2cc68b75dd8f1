"""``precise-prefix-cache-scorer``: score endpoints by the prefix blocks their engines *report* holding.

The approximate ``prefix-cache-scorer`` guesses what each server caches from kvgate's own routing history,
so it is fooled when a server evicts (KV pressure) or when traffic reaches servers around kvgate. This one
reads the engines' KV-cache events (``kvgate.datalayer.kvevents``) into a global block index and scores
``matched leading blocks / prompt blocks`` against it.

Request tokens come from ``InferenceRequest.token_ids`` (token-id prompts) or, for text prompts, from the
servers' tokenizer (``tokenizer`` parameter: a ``tokenizer.json``, a directory holding one, or ``auto``: the
served model's own, found locally; see ``kvgate.scheduling.tokenize``). Chat requests are scored on the
front door's deterministic rendering (``kvgate.openai.request.render_chat``): its blocks keep chats that
share a prefix together through the dispatch-time credit, but match engine-reported blocks only where the
rendering equals the model's chat template.

Event sources per endpoint ``host:port``: the label ``kvgate.io/kv-events`` (a ZMQ address) if set, else
``tcp://host:(port + eventsPortOffset)`` when ``eventsPortOffset`` > 0. ``eventsBind: true`` binds that
address (vLLM *connects* to a concrete ``tcp://host:port``) instead of connecting (vLLM binds ``tcp://*:port``).
Subscribers start on the first pick that runs inside an event loop, or explicitly with ``start()``.

Events describe the past (blocks appear after the engine prefilled them), so the scorer also records
each pick: the chosen endpoint is credited with the prompt's blocks as *pending* for ``speculativeTTL``
seconds of the picker's clock, until its own events confirm them or report their eviction. Requests for
a new prefix that arrive while the first is still queued then follow it instead of scattering.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.kvevents import BlockIndex, KeyMode, KVEventsManager, KVEventSources, token_keys
from kvgate.datalayer.store import EndpointStore
from kvgate.scheduling.blockhash import HashAlgo, VLLMBlockHasher
from kvgate.scheduling.framework import (
    ConfigError,
    CycleState,
    DataConsumer,
    DataSource,
    Params,
    PluginHandle,
    PostPick,
    Producer,
    Scorer,
    publish_cache_expectation,
)
from kvgate.scheduling.plugins.precise_llmd import KVGATE_KEYS, llmd_settings
from kvgate.scheduling.plugins.wiring import Wiring
from kvgate.scheduling.registry import register
from kvgate.scheduling.tokenize import TokenizerSource
from kvgate.scheduling.types import InferenceRequest, prompt_tokens
from kvgate.weakmembers import members

log = logging.getLogger(__name__)

EVENTS_LABEL = "kvgate.io/kv-events"
REPLAY_LABEL = "kvgate.io/kv-events-replay"
CYCLE_KEY = "precise-prefix"
DEFAULT_SPECULATIVE_TTL = 2.0  # seconds: covers a queued request's wait under load, then gives up
# Blocks matched per prompt. The match is exact and its consumers (kvgate-cost-scorer, the director's
# in-flight accounting) count its tokens as they are, so the cap must cover the prompts: 256 blocks
# (the approximate scorer's cap, which extrapolates past it) is only 4,096 tokens at vLLM's default
# 16-token blocks. 2,048 blocks: 32k tokens at 16, 256k at 128.
DEFAULT_MAX_BLOCKS = 2048
# Pending keys per endpoint, derived from the match cap: the credit of this many cap-length prompts not
# yet confirmed by events (a pick credits up to the cap; eviction drops the oldest prompt's keys first).
# A fixed 16,384 held 64 prompts at a 256-block cap, 8 at 2,048 and none above 16,384 (a prompt evicted
# its own leading blocks). At the default cap: 32,768 keys, 3.9 MiB per endpoint when full (`kvgate bench
# picker --section long`, docs/benchmarks/picker.md).
SPECULATIVE_PROMPTS = 16
MIN_SPECULATIVE_CAPACITY = 16_384


def default_speculative_capacity(max_blocks: int) -> int:
    """Default pending keys per endpoint for a match cap of ``max_blocks`` blocks."""
    return max(MIN_SPECULATIVE_CAPACITY, SPECULATIVE_PROMPTS * max_blocks)


# Indexes by name, so a gateway, its tests and several profiles can share one set of subscribers. Each
# name's entries, newest last: more than one only while a reload's new picker, built beside the running
# one it replaces, takes that name in another mode or capacity (review s29-qa29 Q5).
_INDEXES: dict[str, list[SharedIndex]] = {}


class IndexClash(ValueError):
    """A scorer's ``indexName`` is held by a picker that keeps running, in another mode or capacity."""


class TokenizerUnreadable(ValueError):
    """The scorer's ``tokenizer`` (or llm-d's ``modelName``) names a file that cannot be loaded."""


@dataclass(eq=False)
class SharedIndex:
    """One named index and its subscribers, with the pickers holding it (``holders``: their plugin
    handles, weakly: a picker dropped without a release frees it when collected). ``pinned``: taken
    without an owner (a harness's or a test's ``shared_index``): never freed."""

    index: BlockIndex
    manager: KVEventsManager
    holders: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    pinned: bool = False

    def holds(self, claims: IndexClaims | None) -> bool:
        """Whether a picker that keeps running holds it: any holder, but for a build under ``claims``
        those it replaces (``claims.leaving``) do not count."""
        if self.pinned:
            return True
        if claims is None:
            return len(self.holders) > 0
        # (``members``: a reload's check runs this on a thread while a collected holder's removal may run
        # on another: review s34-rev-a34 F6)
        return any(claims.keeps(h) for h in members(self.holders))


class IndexClaims:
    """A reload's builds (``claiming``): the owners (plugin handles) their scorers made hold an index, to
    release when a build is not applied, and the owners they replace, whose holds clash with nothing.
    ``leaving`` None: every owner from before (a check whose pickers never run: the ``--workers``
    supervisor's)."""

    def __init__(self, leaving: Iterable[Any] | None) -> None:
        self.leaving = None if leaving is None else {id(o) for o in leaving}
        self.owners: list[Any] = []

    def keeps(self, holder: Any) -> bool:
        if any(holder is o for o in self.owners):
            return True
        return self.leaving is not None and id(holder) not in self.leaving

    def release(self, owners: Iterable[Any] | None = None) -> None:
        """Release ``owners`` (default: every owner these builds claimed for)."""
        for o in list(self.owners if owners is None else owners):
            release_indexes(o)


_CLAIMS: ContextVar[IndexClaims | None] = ContextVar("kvgate_precise_index_claims", default=None)


@contextmanager
def claiming(claims: IndexClaims) -> Iterator[IndexClaims]:
    """Scorers built inside take their index under ``claims``: as pickers replacing the owners it says
    are leaving, so a name only those hold may take another mode or capacity (a new index)."""
    token = _CLAIMS.set(claims)
    try:
        yield claims
    finally:
        _CLAIMS.reset(token)


def release_indexes(owner: Any) -> None:
    """The picker whose plugin handle is ``owner`` no longer runs (replaced, or built and not applied):
    an index it alone held leaves the table, so its name is free for any mode and capacity."""
    for name in list(_INDEXES):
        entries = _INDEXES[name]
        held = [e for e in entries if owner in e.holders]
        for e in held:
            e.holders.discard(owner)
        gone = [e for e in held if not e.pinned and len(e.holders) == 0]
        if len(gone) == len(entries):
            del _INDEXES[name]
        elif gone:
            _INDEXES[name] = [e for e in entries if all(e is not g for g in gone)]


def index_named(name: str) -> BlockIndex | None:
    """The index a new scorer named ``name`` (in its mode and capacity) would share, newest first."""
    entries = _INDEXES.get(name)
    return entries[-1].index if entries else None


def shared_index(
    name: str,
    mode: KeyMode = "engine",
    capacity: int = 65_536,
    pending_capacity: int = MIN_SPECULATIVE_CAPACITY,
    owner: Any = None,
) -> tuple[BlockIndex, KVEventsManager]:
    """The index named ``name`` in ``mode`` with ``capacity`` per endpoint, shared with every scorer
    that names it so; ``owner`` (the scorer's plugin handle) holds it until ``release_indexes(owner)``.
    ``IndexClash`` if a picker that keeps running holds the name in another mode or capacity: a second
    index of that name would feed from the same engines' events beside it."""
    claims = _CLAIMS.get()
    entries = _INDEXES.get(name, [])
    got: SharedIndex | None = None
    for e in entries:
        if e.index.mode == mode and e.index.default_capacity == capacity:
            got = e
        elif e.holds(claims):
            raise IndexClash(
                f"{name!r} is the index of a running picker in mode {e.index.mode!r} with "
                f"capacityPerEndpoint {e.index.default_capacity} (here: mode {mode!r}, capacityPerEndpoint "
                f"{capacity}): give another indexName, or the same mode and capacityPerEndpoint"
            )
    if got is None:
        index = BlockIndex(mode=mode, default_capacity=capacity, pending_capacity=pending_capacity)
        got = SharedIndex(index, KVEventsManager(index))
        # (those no picker holds any more go: a collected picker's, never released)
        _INDEXES[name] = [e for e in entries if e.pinned or len(e.holders) > 0] + [got]
    elif pending_capacity > got.index.pending_capacity:
        # Sharers with a longer match cap: the largest bound, so none loses its own prompts' credit.
        got.index.pending_capacity = pending_capacity
    if owner is None:
        got.pinned = True
    else:
        got.holders.add(owner)
        if claims is not None and not any(owner is o for o in claims.owners):
            claims.owners.append(owner)
    return got.index, got.manager


class _CachedTokens:
    """framework.CacheExpectation from cached prompt tokens per endpoint."""

    __slots__ = ("cached", "request")

    def __init__(self, cached: dict[str, int], request: InferenceRequest) -> None:
        self.cached = cached
        self.request = request

    def uncached_fraction(self, address: str) -> float:
        r = self.request
        p = prompt_tokens(r.prompt_tokens, r.prompt_text, r.token_ids)
        return 1.0 - min(self.cached.get(address, 0), p) / p


class _Match:
    """One pick's match: the prompt's keys per block size and each candidate's cached tokens."""

    __slots__ = ("cached_tokens", "keys", "ratios", "sizes")

    def __init__(self) -> None:
        self.keys: dict[int, list[int]] = {}  # block size -> keys
        self.sizes: dict[str, int] = {}  # address -> block size
        self.ratios: dict[str, float] = {}
        self.cached_tokens: dict[str, int] = {}


@register("precise-prefix-cache-scorer")
class PrecisePrefixCacheScorer(DataConsumer, Producer, Scorer, PostPick):
    """A producer (matches before any filter, for consumers like ``kvgate-cost-scorer``), a scorer, and
    a post-pick hook (records the pick as pending credit)."""

    bounded = True

    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        *,
        mode: KeyMode = "engine",
        hash_algo: HashAlgo = "sha256",
        hash_seed: str | None = None,
        block_size: int = 16,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        max_tokens: int = 0,
        tokenizer: str | None = None,
        index_name: str = "default",
        capacity: int = 65_536,
        events_port_offset: int = 0,
        events_bind: bool = False,
        replay_port_offset: int = 0,
        speculative_ttl: float = DEFAULT_SPECULATIVE_TTL,
        speculative_capacity: int | None = None,
        events_port: int = 0,
        replay_port: int = 0,
    ) -> None:
        super().__init__(name, handle)
        self.mode: KeyMode = mode
        self.hash_algo: HashAlgo = hash_algo
        self.hash_seed = hash_seed
        self.default_block_size = block_size
        self.max_blocks = max_blocks
        self.max_tokens = max_tokens  # (0: unset; else the cap in blocks is it over the block size)
        if speculative_capacity is None:
            speculative_capacity = default_speculative_capacity(max_blocks)
        self.speculative_ttl = speculative_ttl
        self.events_port_offset = events_port_offset
        self.events_bind = events_bind
        self.replay_port_offset = replay_port_offset
        # llm-d's podDiscoveryConfig.socketPort / replaySocketPort: one port on every endpoint's host.
        self.events_port = events_port
        self.replay_port = replay_port
        try:
            self._tokenizer = TokenizerSource(tokenizer)
        except (ValueError, OSError) as e:
            raise TokenizerUnreadable(str(e)) from e
        self._hashers: dict[int, VLLMBlockHasher] = {}
        if mode == "engine":
            VLLMBlockHasher(block_size, hash_algo, hash_seed)  # fail at config time on bad settings
        # Last: a scorer that fails above holds no index (review s29-qa29 Q5).
        self.index, self.manager = shared_index(index_name, mode, capacity, speculative_capacity, handle)
        if handle.store is not None:
            handle.store.add_listener(self._on_store_change)

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> PrecisePrefixCacheScorer:
        kwargs = cls.settings(params)
        try:
            return cls(name, handle, **kwargs)
        except IndexClash as e:
            raise ConfigError(f"{params.path}.indexName: {e}") from e
        except TokenizerUnreadable as e:  # (kvgate's key, else llm-d's modelName: the tokenizer it found)
            key = "tokenizer" if params.has("tokenizer") else "indexerConfig.tokenizersPoolConfig.modelName"
            raise ConfigError(f"{params.path}.{key}", str(e)) from e
        except (ValueError, OSError) as e:  # bad hash settings, index mode clash
            raise ConfigError(f"{params.path}: {e}") from e

    @staticmethod
    def settings(params: Params) -> dict[str, Any]:
        """The scorer's settings from its parameters (kvgate's keys and llm-d's nested layout), each
        error naming the key; no index taken (``precise-prefix-cache-producer``'s check reads them too)."""
        llmd = llmd_settings(params)  # (llm-d's nested layout, taken out of params first)
        mode: KeyMode = (
            "tokens"
            if params.get_str("mode", "engine", choices=("engine", "tokens")) == "tokens"
            else "engine"
        )
        algos = ("sha256", "sha256_cbor", "xxhash", "xxhash_cbor")
        algo = params.get_str("hashAlgo", "sha256", choices=algos)
        seed = params.get_str("hashSeed", "") or None
        block_size = params.get_int("blockSize", 16, min=1)
        max_blocks = params.get_int("maxPrefixBlocksToMatch", DEFAULT_MAX_BLOCKS, min=1)
        # ``maxPrefixTokensToMatch`` (llm-d's approximate producer's key, the same meaning): the cap in
        # tokens, over each endpoint's block size, replacing ``maxPrefixBlocksToMatch``.
        max_tokens = params.get_int("maxPrefixTokensToMatch", 0, min=0)
        if max_tokens and params.has("maxPrefixBlocksToMatch"):
            raise ConfigError(
                f"{params.path}.maxPrefixTokensToMatch: give it or maxPrefixBlocksToMatch, not both"
            )
        kwargs: dict[str, Any] = dict(
            mode=mode,
            hash_algo=cast(HashAlgo, algo),
            hash_seed=seed,
            block_size=block_size,
            max_blocks=max_blocks,
            max_tokens=max_tokens,
            tokenizer=params.get_str("tokenizer", "") or None,
            index_name=params.get_str("indexName", "default"),
            capacity=params.get_int("capacityPerEndpoint", 65_536, min=1),
            events_port_offset=params.get_int("eventsPortOffset", 0, min=0, max=65535),
            events_bind=params.get_bool("eventsBind", False),
            replay_port_offset=params.get_int("replayPortOffset", 0, min=0, max=65535),
            speculative_ttl=params.get_duration("speculativeTTL", DEFAULT_SPECULATIVE_TTL),
        )
        spec_capacity = params.get_int("speculativeCapacityPerEndpoint", 0, min=1)
        params.finish()
        for setting, (value, where) in llmd.items():
            own = KVGATE_KEYS[setting]
            if not params.has(own):
                kwargs[setting] = value
            elif setting == "tokenizer":
                continue  # (a named tokenizer is more precise than the served model's, found locally)
            elif setting not in kwargs or kwargs[setting] != value:
                raise ConfigError(f"{where}: {value!r} conflicts with {params.path}.{own}; give one of them")
        bs = kwargs["block_size"]  # (the pending credit holds this many cap-length prompts)
        kwargs["speculative_capacity"] = spec_capacity or default_speculative_capacity(
            max(1, max_tokens // bs) if max_tokens else max_blocks
        )
        if kwargs["mode"] == "engine":  # bad hash settings fail here, at load
            try:
                VLLMBlockHasher(kwargs["block_size"], kwargs["hash_algo"], kwargs["hash_seed"])
            except ValueError as e:
                raise ConfigError(f"{params.path}: {e}") from e
        return kwargs

    # -- tokens and keys ---------------------------------------------------------------------------

    def request_tokens(self, cycle: CycleState) -> Sequence[int] | None:
        req = cycle.request
        if req.token_ids is not None:
            return req.token_ids
        tok = self._tokenizer.get(req.model) if req.prompt_text else None
        if tok is None:
            return None
        ids = tok.encode(req.prompt_text)
        req.token_ids = ids  # later plugins (and the front door's accounting) can reuse the exact count
        return ids

    def cap_blocks(self, block_size: int) -> int:
        """Blocks matched at most for ``block_size``: ``maxPrefixTokensToMatch`` over it when set (one at
        least: the index needs a key), else ``maxPrefixBlocksToMatch``."""
        return max(1, self.max_tokens // block_size) if self.max_tokens else self.max_blocks

    def keys_for(self, tokens: Sequence[int], block_size: int) -> list[int]:
        cap = self.cap_blocks(block_size)
        if self.mode == "tokens":
            return token_keys(tokens, block_size, cap)
        hasher = self._hashers.get(block_size)
        if hasher is None:
            hasher = VLLMBlockHasher(block_size, self.hash_algo, self.hash_seed)
            self._hashers[block_size] = hasher
        return hasher.external_hashes(tokens, cap)

    def endpoint_block_size(self, ep: Endpoint) -> int:
        return ep.metrics.block_size or self.index.block_size(ep.address) or self.default_block_size

    # -- scoring -----------------------------------------------------------------------------------

    def match(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> _Match:
        """Match the request against the index (reported blocks plus unexpired pending credit)."""
        found = _Match()
        tokens = self.request_tokens(cycle)
        if not tokens:
            found.cached_tokens = dict.fromkeys((ep.address for ep in endpoints), 0)
            found.ratios = dict.fromkeys(found.cached_tokens, 0.0)
            return found
        # Group endpoints by block size: one hash chain per size (usually one for the whole pool).
        by_size: dict[int, list[Endpoint]] = {}
        for ep in endpoints:
            nb = ep.metrics.num_gpu_blocks
            if nb and self.index.capacity(ep.address) != nb:
                # The engine cannot hold more blocks than this: the tightest bound on its entries.
                self.index.set_capacity(ep.address, nb)
            by_size.setdefault(self.endpoint_block_size(ep), []).append(ep)
        now = cycle.now if self.speculative_ttl > 0 else None
        for bs, eps in by_size.items():
            keys = self.keys_for(tokens, bs)
            found.keys[bs] = keys
            hits = self.index.longest_prefix(keys, [ep.address for ep in eps], now) if keys else {}
            for ep in eps:
                m = hits.get(ep.address, 0)
                found.sizes[ep.address] = bs
                found.ratios[ep.address] = m / len(keys) if keys else 0.0
                found.cached_tokens[ep.address] = m * bs
        return found

    def prepare(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> None:
        found = self.match(cycle, endpoints)
        cycle.data[(CYCLE_KEY, self.name)] = found
        # Consumers (kvgate-cost-scorer, explanations) read the expected cache hit in tokens.
        cycle.data[CYCLE_KEY] = found.cached_tokens
        if found.cached_tokens:
            publish_cache_expectation(
                cycle, _CachedTokens(found.cached_tokens, cycle.request), override=False
            )

    def _found(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> _Match:
        found = cycle.data.get((CYCLE_KEY, self.name))
        if not isinstance(found, _Match) or any(ep.address not in found.ratios for ep in endpoints):
            # Not prepared by a profile (or other candidates): match now.
            self.prepare(cycle, endpoints)
            found = cycle.data[(CYCLE_KEY, self.name)]
        return found

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        ratios = self._found(cycle, endpoints).ratios
        return [ratios[ep.address] for ep in endpoints]

    def prompt_keys(self, cycle: CycleState, address: str) -> tuple[list[int], int] | None:
        """This pick's prompt block keys as matched at ``address`` and their block size (tokens per
        key), or None if the prompt was not matched there (no tokens, or not prepared this cycle)."""
        found = cycle.data.get((CYCLE_KEY, self.name))
        if not isinstance(found, _Match):
            return None
        bs = found.sizes.get(address)
        keys = found.keys.get(bs) if bs is not None else None
        return (keys, bs) if keys and bs else None

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        """The chosen engine will hold the prompt's blocks once it has prefilled them: credit them now."""
        if self.speculative_ttl <= 0:
            return
        got = self.prompt_keys(cycle, endpoint.address)
        if got is not None:
            now = cycle.now
            self.index.add_pending(endpoint.address, got[0], now + self.speculative_ttl, now)

    # -- event sources -----------------------------------------------------------------------------

    def event_source(self, ep: Endpoint) -> tuple[str, str | None] | None:
        """(events address, replay address) for an endpoint, or None if it has none configured."""
        explicit = ep.labels.get(EVENTS_LABEL)
        replay = ep.labels.get(REPLAY_LABEL)
        host, _, port_s = ep.address.rpartition(":")
        if explicit:
            return explicit, replay
        if self.events_port > 0:
            if replay is None and self.replay_port > 0:
                replay = f"tcp://{host}:{self.replay_port}"
            return f"tcp://{host}:{self.events_port}", replay
        if self.events_port_offset <= 0 or not port_s.isdigit():
            return None
        port = int(port_s)
        if replay is None and self.replay_port_offset > 0:
            replay = f"tcp://{host}:{port + self.replay_port_offset}"
        return f"tcp://{host}:{port + self.events_port_offset}", replay

    def data_sources(self, store: EndpointStore) -> list[DataSource]:
        """The KV-event subscriptions for ``store``'s endpoints (started by the front door)."""
        return [KVEventSources(store, self.manager, self.event_source, bind=self.events_bind)]

    def _on_store_change(self, change: Any) -> None:
        # A subscribed endpoint is purged when its last subscription ends (``KVEventSources`` releases
        # its own); dropping it here would end subscriptions other owners of the shared index hold.
        address = change.endpoint.address
        if change.kind == "removed" and self.manager.owners(address) == 0:
            self.index.remove_endpoint(address)


PRODUCER = "precise-prefix-cache-producer"


@register(PRODUCER)
class PrecisePrefixCacheProducer(Wiring):
    """llm-d-router's ``precise-prefix-cache-producer``: the KV-event index and its settings (llm-d's nested
    keys, kvgate's as the scorer's), which kvgate's ``precise-prefix-cache-scorer`` holds itself. A
    ``prefix-cache-scorer`` naming it (``prefixMatchInfoProducerName``) is built as a
    ``precise-prefix-cache-scorer`` with its parameters (``config.picker``); on its own it holds no index
    and takes no part in scheduling. Its parameters are checked here, each error naming the key. llm-d
    wires it as an extractor of its ``endpoint-notification-source``: its role."""

    role = "extractor"

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> PrecisePrefixCacheProducer:
        # (checked on a copy: the scorer built from it says its warnings, once)
        PrecisePrefixCacheScorer.settings(Params(params.raw, params.path))
        return cls(name, handle)
