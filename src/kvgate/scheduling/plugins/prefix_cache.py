"""``prefix-cache-scorer`` (approximate, as the reference) and ``prefix-cache-affinity-filter``.

The scorer is also a producer (it matches the request against the index before any filter runs and
leaves a ``PrefixMatch`` in the cycle state for consumers such as the affinity filter, kvgate's cost
scorer and the director's in-flight accounting) and a post-pick hook (it records the chosen endpoint
as holding the request's blocks).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import StoreChange
from kvgate.scheduling import metrics
from kvgate.scheduling.framework import (
    ConfigError,
    CycleState,
    Filter,
    Params,
    Plugin,
    PluginHandle,
    PostPick,
    Producer,
    Scorer,
    publish_cache_expectation,
)
from kvgate.scheduling.prefix import (
    CHARS_PER_TOKEN,
    DEFAULT_BLOCK_TOKENS,
    DEFAULT_LRU_CAPACITY,
    DEFAULT_MAX_TOTAL_BLOCKS,
    MAX_PREFIX_BLOCKS,
    PrefixIndex,
    block_hashes,
)
from kvgate.scheduling.registry import register
from kvgate.scheduling.tokenize import TokenizerSource
from kvgate.scheduling.types import InferenceRequest

CYCLE_KEY = "prefix-cache"
# A prompt's tail past the hashed window is keyed coarsely (one key per TAIL_STRIDE blocks, 128 tokens at
# the default block size) and only up to TAIL_MAX_BLOCKS blocks past it: enough to tell how far two long
# prompts with the same head agree (a burst's shared context versus each request's own question) at a
# few hashes per pick.
TAIL_STRIDE = 8
TAIL_MAX_BLOCKS = 1792
_pack = struct.Struct("<Q").pack
_h64 = xxhash.xxh64_intdigest
PURGE_INTERVAL_S = 120.0  # reference: inactive endpoints purged from the index every 2 minutes


@dataclass(slots=True)
class PrefixMatch:
    hashes: list[int]
    matched: dict[str, int]  # address -> leading blocks held (absent = 0)
    chunk: int  # characters (or bytes) per block
    # A prompt longer than the hashed window keeps what is needed to key its tail (``tail_keys``).
    model: str = ""
    data: str | bytes = ""  # the hashed prompt (text, or token ids' bytes), kept only when it overflows
    _tail: array[int] | None = None

    def tail_keys(self) -> array[int]:
        """Chained keys of the prompt past the hashed window, one per ``TAIL_STRIDE`` blocks (its full
        strides only, at most ``TAIL_MAX_BLOCKS`` blocks), continuing the window's chain: two prompts
        whose window keys are equal have equal tail keys as far as their tails are equal, to a stride.
        Empty when the prompt fits the window. Computed once, on first use."""
        if self._tail is None:
            out = array("Q")
            if self.data and self.hashes:
                size = self.chunk * TAIL_STRIDE
                start = self.chunk * len(self.hashes)
                raw = self.data[start : start + size * (TAIL_MAX_BLOCKS // TAIL_STRIDE)]
                data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
                prev = self.hashes[-1]
                for start in range(0, len(data) - size + 1, size):
                    prev = _h64(data[start : start + size] + _pack(prev))
                    out.append(prev)
            self._tail = out
        return self._tail

    @property
    def total(self) -> int:
        return len(self.hashes)

    def ratio(self, address: str) -> float:
        n = len(self.hashes)
        return self.matched.get(address, 0) / n if n else 0.0

    def uncached_fraction(self, address: str) -> float:  # framework.CacheExpectation
        return 1.0 - self.ratio(address)


def prefix_match(cycle: CycleState) -> PrefixMatch | None:
    m = cycle.data.get(CYCLE_KEY)
    return m if isinstance(m, PrefixMatch) else None


@register("prefix-cache-scorer")
class PrefixCacheScorer(Producer, Scorer, PostPick):
    bounded = True

    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        *,
        block_size: int = DEFAULT_BLOCK_TOKENS,
        auto_tune: bool = True,
        max_blocks: int = MAX_PREFIX_BLOCKS,
        capacity: int = DEFAULT_LRU_CAPACITY,
        max_total_blocks: int = DEFAULT_MAX_TOTAL_BLOCKS,
        tokenizer: str | None = None,
        engine_lru: bool = False,
    ) -> None:
        super().__init__(name, handle)
        # Model the server's LRU (``PrefixIndex.add``): blocks it holds beyond the hashed ones take index
        # capacity, a request's head ages out last. Off as in the reference; the ``kvgate`` policy sets it.
        self.engine_lru = engine_lru
        # The served model's tokenizer, when set/found: blocks are then exactly the engine's blocks.
        self.tokenizer = TokenizerSource(tokenizer)
        self.block_size = block_size
        self.auto_tune = auto_tune
        self.max_blocks = max_blocks
        self.index = PrefixIndex(capacity, max_total_blocks)
        self._chunk_tokens = block_size  # the block size the index is currently keyed by
        self._last_purge: float | None = None
        if handle.store is not None:
            handle.store.add_listener(self._on_store_change)

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> PrefixCacheScorer:
        p = cls(
            name,
            handle,
            block_size=params.get_int("blockSize", DEFAULT_BLOCK_TOKENS, min=1),
            auto_tune=params.get_bool("autoTune", True),
            max_blocks=params.get_int("maxPrefixBlocksToMatch", MAX_PREFIX_BLOCKS, min=1),
            capacity=params.get_int("lruCapacityPerServer", DEFAULT_LRU_CAPACITY, min=1),
            max_total_blocks=params.get_int("maxTotalBlocks", DEFAULT_MAX_TOTAL_BLOCKS, min=1),
            engine_lru=params.get_bool("engineLru", False),
        )
        tokenizer = params.get_str("tokenizer", "") or None
        params.finish()
        try:
            p.tokenizer = TokenizerSource(tokenizer)
        except (ValueError, OSError) as e:  # an unreadable tokenizer
            raise ConfigError(f"{params.path}.tokenizer: {e}") from e
        return p

    def _on_store_change(self, change: StoreChange) -> None:
        if change.kind == "removed":
            self.index.remove_endpoint(change.endpoint.address)

    def _block_tokens(self, endpoints: Sequence[Endpoint]) -> int:
        if self.auto_tune:
            for ep in endpoints:
                if ep.metrics.block_size:
                    return ep.metrics.block_size
        return self.block_size

    def _token_ids(self, req: InferenceRequest) -> list[int] | None:
        """The body's token ids, else the prompt through this scorer's own tokenizer, else None (text).
        Not ids another plugin derived with its tokenizer: keys must not depend on plugin order."""
        if not req.prompt_text:
            return req.token_ids
        tok = self.tokenizer.get(req.model) if self.tokenizer else None
        if tok is None:
            return None
        ids = tok.encode(req.prompt_text)
        if req.token_ids is None:
            req.token_ids = ids  # the exact count for the front door's accounting too
        return ids

    def prepare(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> None:
        tokens = self._block_tokens(endpoints)
        if tokens != self._chunk_tokens:
            # The servers' block size changed what a block is: old hashes can never match again.
            self.index.clear()
            self._chunk_tokens = tokens
        req = cycle.request
        ids = self._token_ids(req)
        data: str | bytes = ""
        if ids:
            chunk = tokens * 4  # uint32 per token: a block is exactly ``tokens`` tokens
            data = array("I", ids).tobytes()
            hashes = block_hashes(req.model, data, chunk, self.max_blocks)
        elif req.prompt_text:
            chunk = tokens * CHARS_PER_TOKEN
            data = req.prompt_text
            hashes = block_hashes(req.model, data, chunk, self.max_blocks)
        else:
            chunk, hashes = tokens * CHARS_PER_TOKEN, []
        window = chunk * len(hashes)
        matched: dict[str, int] = {}
        if hashes and len(self.index):
            addrs = [ep.address for ep in endpoints]
            for a, n in zip(addrs, self.index.match(hashes, addrs), strict=True):
                if n:
                    matched[a] = n
        overflow = len(hashes) == self.max_blocks and len(data) > window
        match = cycle.data[CYCLE_KEY] = PrefixMatch(
            hashes, matched, chunk, req.model, data if overflow else ""
        )
        if hashes:
            # The approximate index's guess wins over a precise scorer's in the same cycle.
            publish_cache_expectation(cycle, match, override=True)

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        m = prefix_match(cycle)
        if m is None or not m.matched:
            return [0.0] * len(endpoints)
        get, n = m.matched.get, len(m.hashes)
        return [get(ep.address, 0) / n for ep in endpoints]

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        m = prefix_match(cycle)
        if m is None or not m.hashes:
            return
        ratio = m.ratio(endpoint.address)
        metrics.PREFIX_HIT_RATIO.observe(ratio)
        metrics.PREFIX_HIT_BYTES.observe(m.matched.get(endpoint.address, 0) * m.chunk)
        cap = endpoint.metrics.num_gpu_blocks
        filler = 0
        if self.engine_lru:
            # Blocks the server will hold that no later prompt names: the generated tokens (vLLM caches
            # them too), at most one capacity's worth. (A prompt's blocks past the hashed ones are not
            # counted: they are mostly a shared context's tail, cached once, not new per request.)
            filler = min((cycle.request.max_tokens or 0) // self._chunk_tokens, cap or DEFAULT_LRU_CAPACITY)
        self.index.add(endpoint.address, m.hashes, cap, filler=filler, tail_first=self.engine_lru)
        metrics.PREFIX_INDEX_SIZE.set(self.index.total)
        if self._last_purge is None:
            self._last_purge = cycle.now
        elif cycle.now - self._last_purge >= PURGE_INTERVAL_S and self.handle.store is not None:
            self._last_purge = cycle.now
            self.index.retain({ep.address for ep in self.handle.store.all()})


def find_prefix_plugin(handle: PluginHandle, name: str | None) -> PrefixCacheScorer:
    """The named prefix scorer, else the first configured one, else a private one with defaults."""
    p: Plugin | None = handle.plugin(name) if name else handle.find(PrefixCacheScorer)
    if isinstance(p, PrefixCacheScorer):
        return p
    return PrefixCacheScorer(f"{name or 'prefix-cache-scorer'}#implicit", handle)


class UsesPrefixPlugin:
    """For plugins that consume a prefix scorer's matches: ``prefixPluginRef`` resolved on first use,
    after every plugin of the config exists (declaration order is free), and declared as a dependency
    so the profile runs its hooks even when it is not one of the profile's scorers."""

    handle: PluginHandle
    prefix_ref: str | None
    _prefix: PrefixCacheScorer | None

    @property
    def prefix(self) -> PrefixCacheScorer:
        if self._prefix is None:
            self._prefix = find_prefix_plugin(self.handle, self.prefix_ref)
        return self._prefix

    def dependencies(self) -> list[Plugin]:
        return [self.prefix]


@register("prefix-cache-affinity-filter")
class PrefixCacheAffinityFilter(UsesPrefixPlugin, Filter):
    """Sticky until saturated: keep the endpoints holding most of the prompt's prefix, unless every one
    of them is overloaded (then pass all through so load-aware scorers can spread the work).

    Keeps endpoints with match ratio >= ``threshold`` and within ``slack`` of the best; overloaded =
    scraped queue >= ``queueThreshold`` or KV >= ``kvCacheUtilThreshold`` (fresh metrics), or in-flight
    requests >= ``maxInFlight``.
    """

    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        prefix_ref: str | None = None,
        threshold: float = 0.5,
        slack: float = 0.1,
        queue_threshold: int = 5,
        kv_threshold: float = 0.8,
        max_inflight: int = 64,
    ) -> None:
        super().__init__(name, handle)
        self.prefix_ref = prefix_ref
        self._prefix: PrefixCacheScorer | None = None
        self.threshold = threshold
        self.slack = slack
        self.queue_threshold = queue_threshold
        self.kv_threshold = kv_threshold
        self.max_inflight = max_inflight

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> PrefixCacheAffinityFilter:
        ref = params.get_str("prefixPluginRef", "") or None
        f = cls(
            name,
            handle,
            ref,
            threshold=params.get_float("threshold", 0.5, min=0.0, max=1.0),
            slack=params.get_float("slack", 0.1, min=0.0, max=1.0),
            queue_threshold=params.get_int("queueThreshold", 5, min=1),
            kv_threshold=params.get_float("kvCacheUtilThreshold", 0.8, min=0.0, max=1.0),
            max_inflight=params.get_int("maxInFlight", 64, min=1),
        )
        params.finish()
        return f

    def overloaded(self, ep: Endpoint, now: float) -> bool:
        if ep.inflight.requests >= self.max_inflight:
            return True
        m = ep.metrics
        return self.handle.fresh(ep, now) and (
            m.waiting_queue_size >= self.queue_threshold or m.kv_cache_usage >= self.kv_threshold
        )

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        m = prefix_match(cycle)
        if m is None or not m.matched:
            return endpoints
        ratios = [m.ratio(ep.address) for ep in endpoints]
        best = max(ratios)
        if best < self.threshold:
            return endpoints
        floor = max(self.threshold, best - self.slack)
        keep = [
            ep
            for ep, r in zip(endpoints, ratios, strict=True)
            if r >= floor and not self.overloaded(ep, cycle.now)
        ]
        return keep or endpoints
