"""``prefix-cache-scorer`` (approximate, as the reference) and ``prefix-cache-affinity-filter``.

The scorer is also a producer (it matches the request against the index before any filter runs and
leaves a ``PrefixMatch`` in the cycle state for consumers such as the affinity filter, kvgate's cost
scorer and the director's in-flight accounting) and a post-pick hook (it records the chosen endpoint
as holding the request's blocks).
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    ResponseObserver,
    Scorer,
    TTFTOracle,
    add_explanation,
    publish_cache_expectation,
)
from kvgate.scheduling.plugins.affinity_gate import REFERENCE_KEYS, AffinityGate, read_gate
from kvgate.scheduling.plugins.wiring import Wiring
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
from kvgate.scheduling.types import InferenceRequest, Usage

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
# cachedTokensFeedback: at most this many picks are remembered between pick and usage (the oldest are
# dropped: a door that never reports one costs nothing), each with at most ``maxPrefixBlocksToMatch``
# touch numbers (8 bytes each).
MAX_CLAIMS = 8192
# A text prompt's blocks are characters, and the engine counts tokens: the block it lacked is estimated
# from the prompt's average characters per token, so it acts only when the engine held less than this
# share of what the index claimed (one block less, as for token ids, is left to the estimate's error).
TEXT_SHARE = 0.5
# pendingHolders: at most this many (block, endpoint) entries in the pending map (~80 bytes each: ~42 MB),
# on top of MAX_CLAIMS picks; past it the oldest pending picks are parked: no longer pending holders, still
# recorded at their first token (review rev-b34 F3, rev-d34 F4).
MAX_PENDING_KEYS = 1 << 19


@dataclass(slots=True)
class _Claim:
    """What the index claimed for a pick on its endpoint, kept until the engine's usage says what it held."""

    address: str
    # touch number, at pick time, of each block the index claimed the endpoint held (0: last touched by a
    # pick still running there)
    seqs: array[int]
    block_tokens: int  # index block size (tokens) at pick time
    text_chars: int  # characters hashed (text prompts), 0 for token ids: blocks are then exact


@dataclass(slots=True)
class _Pending:
    """A pick whose prefill has not run yet at its endpoint (pendingHolders): its blocks enter the index
    at its first token (the engine computed them) and are dropped if it fails before."""

    address: str
    hashes: array[int]  # its prompt's block hashes (64-bit words)
    capacity: int | None
    filler: int


class _PendingPicks:
    """pendingHolders' state, shared by a reload's old and new scorer (the old one's requests still finish
    through it, review rev-b34 F6). ``held``: per endpoint, how many of its pending picks name each block
    hash. One map for every pick: the hashes are chained (a block's hash names every block before it), so
    an endpoint's pending depth for a prompt is one binary search of the prompt's hashes in it, O(log
    blocks) lookups per endpoint however many picks are pending (review rev-b34 F3: a scan per pick cost
    O(endpoints x 64 x log blocks)). ``parked``: picks whose request ended at its endpoint without a first
    token (a failure, a resend on a new connection, Envoy's fallback to another address): no holder, but a
    first token of the same request, wherever it comes, still records it there (review rev-b34 F4)."""

    __slots__ = ("held", "keys", "parked", "picks")

    def __init__(self) -> None:
        self.picks: OrderedDict[str, _Pending] = OrderedDict()  # request id -> its pending pick
        self.parked: OrderedDict[str, _Pending] = OrderedDict()
        self.held: dict[str, dict[int, int]] = {}  # endpoint -> block hash -> pending picks naming it
        self.keys = 0  # entries in ``held``, all endpoints (MAX_PENDING_KEYS)

    def clear(self) -> None:
        self.picks.clear()
        self.parked.clear()
        self.held.clear()
        self.keys = 0

    def hold(self, request_id: str, p: _Pending) -> None:
        self.drop(request_id)  # picked again (a retry): only the latest pick is pending
        self.picks[request_id] = p
        c = self.held.get(p.address)
        if c is None:
            c = self.held[p.address] = {}
        n, get = len(c), c.get
        for h in p.hashes:  # (a plain loop: faster than Counter.update or map/zip chains, measured)
            c[h] = get(h, 0) + 1
        self.keys += len(c) - n
        while len(self.picks) > MAX_CLAIMS:  # a door that never reports
            self.drop(next(iter(self.picks)))
        while self.keys > MAX_PENDING_KEYS:
            # Out of the map (no longer a pending holder), not forgotten: its first token still records
            # it, as a failed pick's (~2,048 picks of 256 distinct blocks fill it; review rev-d34 F4).
            self.park(next(iter(self.picks)))

    def _unhold(self, p: _Pending) -> None:
        c = self.held.get(p.address)
        if c is None:
            return
        n, get = len(c), c.get
        for h in p.hashes:
            k = get(h, 0) - 1
            if k > 0:
                c[h] = k
            else:
                c.pop(h, None)  # (the last pick naming it)
        self.keys -= n - len(c)
        if not c:
            del self.held[p.address]

    def drop(self, request_id: str) -> _Pending | None:
        """Forget ``request_id``'s pick, pending or parked (returned)."""
        p = self.picks.pop(request_id, None)
        if p is not None:
            self._unhold(p)
            return p
        return self.parked.pop(request_id, None)

    def park(self, request_id: str) -> None:
        p = self.picks.pop(request_id, None)
        if p is not None:
            self._unhold(p)
            self.parked[request_id] = p
            if len(self.parked) > MAX_CLAIMS:
                self.parked.popitem(last=False)

    def drop_endpoint(self, address: str) -> None:
        if address in self.held:
            for rid in [rid for rid, p in self.picks.items() if p.address == address]:
                self.drop(rid)

    def depth(self, hashes: Sequence[int], address: str, known: int) -> int:
        """How deep ``address``'s pending picks share ``hashes``' head, or ``known`` when not deeper."""
        c = self.held.get(address)
        n = len(hashes)
        if c is None or known >= n:
            return known
        lo = known or 1
        if hashes[lo - 1] not in c:  # (the chain: a block held means every block before it is)
            return known
        hi = n
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if hashes[mid - 1] in c:
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass(slots=True)
class PrefixMatch:
    hashes: list[int]
    matched: dict[str, int]  # address -> leading blocks held (absent = 0)
    chunk: int  # characters (or bytes) per block
    # A prompt longer than the hashed window keeps what is needed to key its tail (``tail_keys``).
    model: str = ""
    data: str | bytes = ""  # the hashed prompt (text, or token ids' bytes), kept only when it overflows
    by_ids: bool = False  # blocks are token ids (exact), not characters
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

    def held_share(self, address: str) -> float:
        """The share of the whole prompt ``address`` holds. A prompt longer than the hashed window
        (``data`` kept) held across the whole window counts as held throughout (burstTail's premise); held
        short of it, only its held blocks count, over the whole prompt's length: the window's share would
        read a long prompt's head as all of it (a token-id batch whose first prompt is cached read as
        the whole batch cached: review s21-fixes-a L4)."""
        n = len(self.hashes)
        if not n:
            return 0.0
        b = self.matched.get(address, 0)
        if b >= n or not self.data:
            return b / n
        return b * self.chunk / len(self.data)

    def uncached_fraction(self, address: str) -> float:  # framework.CacheExpectation
        return 1.0 - self.held_share(address)


def prefix_match(cycle: CycleState) -> PrefixMatch | None:
    m = cycle.data.get(CYCLE_KEY)
    return m if isinstance(m, PrefixMatch) else None


def block_tokens_param(params: Params) -> int:
    """The fallback block size in tokens: ``blockSizeTokens``, as the reference names it now, else the
    reference's older keys, in characters there and here: ``blockSize`` (deprecated by the reference) and
    GIE v0.4-v0.5's ``hashBlockSize``, read as characters / 4 with one warning saying so. With
    ``blockSizeTokens`` set they are ignored (the reference's rule), also said."""
    tokens = params.get_int("blockSizeTokens", 0, min=1)
    source = "blockSizeTokens"
    for key in ("blockSize", "hashBlockSize"):
        chars = params.get_int(key, 0, min=1)
        if not chars:
            continue
        if tokens:
            params.warn(key, f"ignored: {source} is set ({tokens} tokens)")
            continue
        tokens, source = max(1, chars // CHARS_PER_TOKEN), key
        # kvgate read ``blockSize`` as tokens until qa27 Q1: its users' number meant that (review
        # s27-rev-fixes27a F4), so the line says how to keep it too.
        was = f" (kvgate before qa27 Q1 read it as tokens: to keep that, write blockSizeTokens: {chars})"
        params.warn(
            key,
            f"the reference's deprecated block size in characters: read as {tokens} tokens "
            f"({chars} / {CHARS_PER_TOKEN}); write blockSizeTokens: {tokens}"
            + (was if key == "blockSize" else ""),
        )
    return tokens or DEFAULT_BLOCK_TOKENS


APPROX_PRODUCER = "approx-prefix-cache-producer"
# The reference's newest layout (llm-d-router): the scorer names the producer whose match it reads.
PRODUCER_KEY = "prefixMatchInfoProducerName"


class ApproxPrefixCacheProducer(Wiring):
    """llm-d-router's ``approx-prefix-cache-producer``: the index and its settings, which kvgate's
    ``prefix-cache-scorer`` holds itself. A scorer naming it (``prefixMatchInfoProducerName``) is built
    with its parameters (``config.picker`` rewrites them, ``scorer_parameters``); it takes no part in
    scheduling on its own."""

    role = "prefix-cache producer"

    def __init__(
        self, name: str, handle: PluginHandle, settings: dict[str, Any] | None = None, path: str = ""
    ) -> None:
        super().__init__(name, handle)
        self.settings = settings or {}  # (``scorer_parameters``)
        self.path = path
        self._index: PrefixCacheScorer | None = None

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> ApproxPrefixCacheProducer:
        return cls(name, handle, cls.scorer_parameters(params), params.path)

    def index(self) -> PrefixCacheScorer:
        """The index its consumers read where no ``prefix-cache-scorer`` is declared (llm-d's
        optimized-baseline layout: producer + ``prefix-cache-affinity-filter``), built once with its
        parameters and shared by them, as the reference's consumers share the producer's (review
        s28-rev-cfg28 F5: they got a private index with kvgate's defaults)."""
        if self._index is None:
            self._index = PrefixCacheScorer.create(
                f"{self.name}#index", Params(dict(self.settings), self.path), self.handle
            )
        return self._index

    @staticmethod
    def scorer_parameters(params: Params) -> dict[str, Any]:
        """The producer's parameters (the reference's ``autoTune``, ``blockSizeTokens``,
        ``maxPrefixBlocksToMatch``, ``maxPrefixTokensToMatch``, ``lruCapacityPerServer``; its deprecated
        ``blockSize``; kvgate's index keys ``maxTotalBlocks``, ``engineLru``, ``cachedTokensFeedback``,
        ``tokenizer``) as the ``prefix-cache-scorer`` parameters that mean the same. The reference's 0
        (its "unset" / "unlimited") takes kvgate's default, except where kvgate cannot do what it asks:
        then a ConfigError naming the key. A key left out takes the kvgate scorer's default."""
        auto = params.get_bool("autoTune", True)
        tokens = params.get_int("blockSizeTokens", 0, min=0)
        chars = params.get_int("blockSize", 0, min=0)
        if chars and not tokens:  # (the reference's producer refuses it too)
            raise ConfigError(
                f"{params.path}.blockSize: the deprecated block size in characters is refused by "
                f"{APPROX_PRODUCER}: write blockSizeTokens (tokens)"
            )
        if chars:
            params.warn("blockSize", f"ignored: blockSizeTokens is set ({tokens} tokens)")
        if not tokens and not auto:
            raise ConfigError(f"{params.path}.blockSizeTokens: must be > 0 when autoTune is false, got 0")
        max_blocks = params.get_int("maxPrefixBlocksToMatch", MAX_PREFIX_BLOCKS, min=0)
        max_tokens = params.get_int("maxPrefixTokensToMatch", 0, min=0)
        if not max_blocks and not max_tokens:
            raise ConfigError(
                f"{params.path}.maxPrefixBlocksToMatch: 0 with maxPrefixTokensToMatch 0 (the reference's "
                "whole prompt) is not supported: kvgate caps the match; set one of them above 0"
            )
        out: dict[str, Any] = {
            "autoTune": auto,
            "blockSizeTokens": tokens or DEFAULT_BLOCK_TOKENS,
            "maxPrefixBlocksToMatch": max_blocks or MAX_PREFIX_BLOCKS,
            "lruCapacityPerServer": params.get_int("lruCapacityPerServer", 0, min=0) or DEFAULT_LRU_CAPACITY,
            "maxTotalBlocks": params.get_int("maxTotalBlocks", DEFAULT_MAX_TOTAL_BLOCKS, min=1),
            "engineLru": params.get_bool("engineLru", False),
            "cachedTokensFeedback": params.get_bool("cachedTokensFeedback", False),
            "pendingHolders": params.get_bool("pendingHolders", False),
        }
        if max_tokens:
            out["maxPrefixTokensToMatch"] = max_tokens
        if tokenizer := params.get_str("tokenizer", ""):
            out["tokenizer"] = tokenizer
        params.finish()
        return out


class PrefixCacheScorer(Producer, Scorer, PostPick, ResponseObserver):
    bounded = True

    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        *,
        block_size: int = DEFAULT_BLOCK_TOKENS,
        auto_tune: bool = True,
        max_blocks: int = MAX_PREFIX_BLOCKS,
        max_tokens: int = 0,
        capacity: int = DEFAULT_LRU_CAPACITY,
        max_total_blocks: int = DEFAULT_MAX_TOTAL_BLOCKS,
        tokenizer: str | None = None,
        engine_lru: bool = False,
        cached_feedback: bool = False,
        pending_holders: bool = False,
    ) -> None:
        super().__init__(name, handle)
        # pendingHolders (off): a pick's blocks enter the index at its first token, not at the pick;
        # until then the endpoint is a pending holder, matched by later picks as the same depth (they
        # will hit once its prefill has run, as the engine shares a computed block) but forgotten if the
        # request fails first.
        self.pending_holders = pending_holders
        self._pend = _PendingPicks()
        # The engine's reported cached prompt tokens correct the index (``on_usage``). Off by default,
        # in the ``kvgate`` policy too: measured no better (docs/benchmarks/fleet-cached-feedback.md).
        self.cached_feedback = cached_feedback
        self._claims: OrderedDict[str, _Claim] = OrderedDict()
        # Per endpoint, picks not yet finished: request id -> the touch numbers its blocks got (first, last).
        self._running: dict[str, OrderedDict[str, tuple[int, int]]] = {}
        self.forgotten = 0  # index entries dropped on the engines' word (tests, docs)
        # Model the server's LRU (``PrefixIndex.add``): blocks it holds beyond the hashed ones take index
        # capacity, a request's head ages out last. Off as in the reference; the ``kvgate`` policy sets it.
        self.engine_lru = engine_lru
        # The served model's tokenizer, when set/found: blocks are then exactly the engine's blocks.
        self.tokenizer = TokenizerSource(tokenizer)
        self.block_size = block_size
        self.auto_tune = auto_tune
        self.max_blocks = max_blocks
        # ``maxPrefixTokensToMatch`` (0: unset): the match cap in tokens, over the block size in use, which
        # then replaces ``maxPrefixBlocksToMatch`` (the reference's rule).
        self.max_tokens = max_tokens
        self.index = PrefixIndex(capacity, max_total_blocks)
        metrics.prefix_index(self.index)  # (its size read at the scrape, summed with the others')
        self._chunk_tokens = block_size  # the block size the index is currently keyed by
        self._cap_blocks()
        self._last_purge: float | None = None
        if handle.store is not None:
            handle.store.add_listener(self._on_store_change)

    @staticmethod
    def _settings(params: Params) -> dict[str, Any]:
        """The scorer's settings from its parameters, each key's default and reading applied."""
        out: dict[str, Any] = {
            "block_size": block_tokens_param(params),
            "auto_tune": params.get_bool("autoTune", True),
            "max_blocks": params.get_int("maxPrefixBlocksToMatch", MAX_PREFIX_BLOCKS, min=1),
            "max_tokens": params.get_int("maxPrefixTokensToMatch", 0, min=0),
            "capacity": params.get_int("lruCapacityPerServer", DEFAULT_LRU_CAPACITY, min=1),
            "max_total_blocks": params.get_int("maxTotalBlocks", DEFAULT_MAX_TOTAL_BLOCKS, min=1),
            "engine_lru": params.get_bool("engineLru", False),
            "cached_feedback": params.get_bool("cachedTokensFeedback", False),
            "pending_holders": params.get_bool("pendingHolders", False),
            "tokenizer": params.get_str("tokenizer", "") or None,
        }
        params.finish()
        return out

    @classmethod
    def settings_of(cls, parameters: Mapping[str, Any]) -> dict[str, Any]:
        """What ``parameters`` (checked at load) set, spelling aside: ``blockSize: 64`` and
        ``blockSizeTokens: 16`` are the same scorer. A reload keeps a prefix index, and ``--workers``
        gossip layouts agree, by these (review s27-rev-fixes27a F4)."""
        out = cls._settings(Params(dict(parameters), ""))
        # (when a block enters the index, not what one means: a reload toggling it keeps the index)
        del out["pending_holders"]
        return out

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> PrefixCacheScorer:
        settings = cls._settings(params)
        tokenizer = settings.pop("tokenizer")
        p = cls(name, handle, **settings)
        try:
            p.tokenizer = TokenizerSource(tokenizer)
        except (ValueError, OSError) as e:  # an unreadable tokenizer
            raise ConfigError(f"{params.path}.tokenizer: {e}") from e
        return p

    def take_index(self, other: PrefixCacheScorer) -> None:
        """Serve from ``other``'s index (a config reload's new picker, this scorer's parameters unchanged:
        what the old one learnt keeps routing). Both then read and write the same index."""
        self.index = other.index
        self._pend = other._pend  # (its requests in flight still settle in it: review rev-b34 F6)
        self._chunk_tokens = other._chunk_tokens
        self._cap_blocks()

    def _cap_blocks(self) -> None:
        if self.max_tokens:  # (a cap below one block still hashes one: the index needs a key)
            self.max_blocks = max(1, self.max_tokens // self._chunk_tokens)

    def _on_store_change(self, change: StoreChange) -> None:
        if change.kind == "removed":
            self.index.remove_endpoint(change.endpoint.address)
            self._running.pop(change.endpoint.address, None)
            self._pend.drop_endpoint(change.endpoint.address)

    def _block_tokens(self, endpoints: Sequence[Endpoint]) -> int:
        if self.auto_tune:
            for ep in endpoints:
                if ep.metrics.block_size:
                    return ep.metrics.block_size
        return self.block_size

    def _server_blocks(self, endpoint: Endpoint) -> int | None:
        """The index's capacity for ``endpoint``: its scraped ``num_gpu_blocks`` under ``autoTune``, else
        None (the configured ``lruCapacityPerServer``), as the reference's ``makeServer`` (qa36a F3)."""
        return endpoint.metrics.num_gpu_blocks if self.auto_tune else None

    def _token_ids(self, req: InferenceRequest) -> Sequence[int] | None:
        """The body's token ids, else the prompt through this scorer's own tokenizer, else None (text).
        Not ids another plugin derived with its tokenizer: keys must not depend on plugin order."""
        if not req.prompt_text:
            return req.token_ids
        tok = self.tokenizer.get(req.model) if self.tokenizer.setting is not None else None
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
            self._pend.clear()  # (picks keyed the old way: committed, they could never match)
            self._chunk_tokens = tokens
            self._cap_blocks()
        req = cycle.request
        text = req.prompt_text
        ids = self._token_ids(req)
        chunk = tokens * 4 if ids else tokens * CHARS_PER_TOKEN  # (uint32 per token: a block is ``tokens``)
        conv = req.conversation
        head = conv.head if conv is not None else ()
        if not (
            head
            and conv is not None
            and (conv.chunk, conv.by_ids, conv.model) == (chunk, bool(ids), req.model)
        ):
            head = ()
        data: str | bytes = ""
        hashes: list[int]
        if head and conv is not None:
            # A Responses follow-up: the earlier turn's chain (which starts with the same tools and
            # instructions: ``openai.responses.follow_up``), continued by this turn's new input (its own
            # head is the chain's start already): the server prefills the conversation, not only the new
            # input, so the endpoint holding it matches. No tail keys: ``data`` is only the new input.
            rest = self.max_blocks - len(head)
            if ids:
                own: str | bytes = array(
                    "I", ids[len(ids) * conv.lead_chars // max(1, len(text)) :]
                ).tobytes()
            else:
                own = text[conv.lead_chars :]
            more = block_hashes(req.model, own, chunk, rest, seed=head[-1]) if rest > 0 and own else []
            hashes = [*head[: self.max_blocks], *more]
        elif ids:
            data = array("I", ids).tobytes()
            hashes = block_hashes(req.model, data, chunk, self.max_blocks)
        elif text:
            data = text
            # An ASCII text shorter than one block has none (its UTF-8 bytes are its characters).
            short = len(text) < chunk and text.isascii()
            hashes = [] if short else block_hashes(req.model, text, chunk, self.max_blocks)
        else:
            hashes = []
        window = chunk * len(hashes)
        matched: dict[str, int] = {}
        if hashes and self.index.total:
            addrs = [ep.address for ep in endpoints]
            for a, n in zip(addrs, self.index.match(hashes, addrs), strict=True):
                if n:
                    matched[a] = n
        if hashes and self._pend.held and self.pending_holders:
            self._match_pending(hashes, endpoints, matched)
        overflow = len(hashes) == self.max_blocks and len(data) > window
        # (positional: a keyword argument costs a generated ``__init__`` ~0.1 us more, once per pick)
        match = cycle.data[CYCLE_KEY] = PrefixMatch(
            hashes, matched, chunk, req.model, data if overflow else "", bool(ids)
        )
        if hashes:
            # The approximate index's guess wins over a precise scorer's in the same cycle.
            publish_cache_expectation(cycle, match, override=True)

    def _match_pending(
        self, hashes: list[int], endpoints: Sequence[Endpoint], matched: dict[str, int]
    ) -> None:
        """pendingHolders: an endpoint whose pending pick shares this prompt's head deeper than the index
        knows matches that deep: this request, sent there, finds those blocks once that prefill has run
        (its wait for it is in the endpoint's pending prefill tokens, where the cost scorer reads it)."""
        pend = self._pend
        for ep in endpoints:
            a = ep.address
            if a in pend.held:
                known = matched.get(a, 0)
                d = pend.depth(hashes, a, known)
                if d > known:
                    matched[a] = d

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        m = prefix_match(cycle)
        if m is None or not m.matched:
            return [0.0] * len(endpoints)
        get, n = m.matched.get, len(m.hashes)
        return [get(ep.address, 0) / n for ep in endpoints]

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        m = cycle.data.get(CYCLE_KEY)  # (``prefix_match`` inlined: once per pick)
        if not isinstance(m, PrefixMatch) or not m.hashes:
            return
        if (conv := cycle.request.conversation) is not None:
            # (this turn's chain, for the door to keep for the next one: ``Conversation``)
            conv.chain, conv.chain_chunk, conv.chain_by_ids = m.hashes, m.chunk, m.by_ids
        ratio = m.ratio(endpoint.address)
        metrics.PREFIX_HIT_RATIO.observe(ratio)
        metrics.PREFIX_HIT_BYTES.observe(m.matched.get(endpoint.address, 0) * m.chunk)
        cap = self._server_blocks(endpoint)
        filler = 0
        if self.engine_lru:
            # Blocks the server will hold that no later prompt names: the generated tokens (vLLM caches
            # them too), at most one capacity's worth. (A prompt's blocks past the hashed ones are not
            # counted: they are mostly a shared context's tail, cached once, not new per request.)
            most = cap or self.index.default_capacity
            filler = min((cycle.request.max_tokens or 0) // self._chunk_tokens, most)
        if self.cached_feedback:
            self._remember(cycle.request, endpoint.address, m)
        if self.pending_holders:
            self._pend.hold(
                cycle.request.request_id, _Pending(endpoint.address, array("Q", m.hashes), cap, filler)
            )
        else:
            self._commit(cycle.request, endpoint.address, m.hashes, cap, filler)
        if self._last_purge is None:
            self._last_purge = cycle.now
        elif cycle.now - self._last_purge >= PURGE_INTERVAL_S and self.handle.store is not None:
            self._last_purge = cycle.now
            self.index.retain({ep.address for ep in self.handle.store.all()})

    def _commit(
        self, req: InferenceRequest, address: str, hashes: Sequence[int], cap: int | None, filler: int
    ) -> None:
        """Record ``address`` as holding ``hashes`` (at the pick; pendingHolders: at its first token)."""
        first = self.index.seq + 1
        self.index.add(address, hashes, cap, filler=filler, tail_first=self.engine_lru)
        if self.cached_feedback:
            self._started(req, address, first)

    # -- pendingHolders: a pick's blocks are the endpoint's once its prefill has run -----------------------

    @property
    def _pending(self) -> OrderedDict[str, _Pending]:
        """Request id -> its pick, pending at its endpoint (tests)."""
        return self._pend.picks

    @property
    def _pending_at(self) -> dict[str, dict[int, int]]:
        """Endpoint -> its pending picks' blocks (tests)."""
        return self._pend.held

    def _ran(self, request: InferenceRequest, endpoint: Endpoint) -> None:
        """The request's prefill ran at ``endpoint`` (its first token, or the engine's usage for a reply
        read whole): its pending (or parked) pick's blocks are that endpoint's, wherever it was picked
        for (a resend, Envoy's fallback: review rev-b34 F4)."""
        p = self._pend.drop(request.request_id)
        if p is None:
            return
        cap = p.capacity if p.address == endpoint.address else self._server_blocks(endpoint)
        self._commit(request, endpoint.address, p.hashes, cap, p.filler)

    # -- cachedTokensFeedback: the engine's word on what it held corrects the index -----------------------

    def _in_use(self, address: str) -> tuple[list[int], list[int]]:
        """The touch-number ranges (firsts, lasts; sorted) of the picks still running on ``address``: the
        entries they last touched are blocks the engine holds in use (it evicts only free ones)."""
        running = self._running.get(address)
        if not running:
            return [], []
        ranges = sorted(running.values())
        return [a for a, _ in ranges], [b for _, b in ranges]

    def _remember(self, req: InferenceRequest, address: str, m: PrefixMatch) -> None:
        """Before this pick's own blocks are recorded: the touch numbers of the blocks the index claimed
        ``address`` held, 0 for one last touched by a pick still running there (in use, or not computed
        yet: the engine's lacking it proves no eviction)."""
        claimed = m.matched.get(address, 0)
        if claimed < 2:  # (one block may be the engine's own rounding: nothing to learn)
            return
        seqs = array("Q", self.index.touched(address, m.hashes[:claimed]))
        firsts, lasts = self._in_use(address)
        if firsts:
            for i, seq in enumerate(seqs):
                k = bisect_right(firsts, seq) - 1
                if k >= 0 and seq <= lasts[k]:
                    seqs[i] = 0
        text = 0 if m.by_ids else len(req.prompt_text)
        self._claims[req.request_id] = _Claim(address, seqs, self._chunk_tokens, text)
        if len(self._claims) > MAX_CLAIMS:
            self._claims.popitem(last=False)

    def _started(self, req: InferenceRequest, address: str, first: int) -> None:
        if self.index.seq < first:
            return  # it touched nothing
        running = self._running.setdefault(address, OrderedDict())
        running[req.request_id] = (first, self.index.seq)
        if len(running) > MAX_CLAIMS:
            running.popitem(last=False)

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        if self._pend.picks or self._pend.parked:
            self._ran(request, endpoint)

    def on_prefilled(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        if self._pend.picks or self._pend.parked:
            self._ran(request, endpoint)  # (a 2xx whose usage the door did not read: rev-d34 F2)

    def on_finished(
        self, request: InferenceRequest, endpoint: Endpoint, output_tokens: int, ok: bool, now: float
    ) -> None:
        if self._pend.picks or self._pend.parked:
            # Still pending: no first token came, nor the engine's usage (``on_usage``: a reply read whole
            # that succeeded). Ended well (a 4xx, the client gone after the head): the engine computed
            # nothing, forgotten. Failed: parked, a resend's first token may follow (rev-b34 F1, F2, F4).
            if ok:
                self._pend.drop(request.request_id)
            else:
                self._pend.park(request.request_id)
        running = self._running.get(endpoint.address)
        if running is not None and running.pop(request.request_id, None) is not None and not running:
            del self._running[endpoint.address]
        self._claims.pop(request.request_id, None)

    def on_usage(self, request: InferenceRequest, endpoint: Endpoint, usage: Usage, now: float) -> None:
        """The engine computed this prompt from its block ``j`` on, where the index claimed more. When
        the pick that last touched block ``j`` there had finished by this pick (so the block was free,
        not a burst's prefix still being computed), the engine had evicted it, and, its cache being LRU,
        every free block it last used earlier: the index forgets, for that endpoint, every entry touched
        at or before block ``j`` was, but those of picks still running there (blocks in use). Entries
        touched since (this pick's own blocks among them: the engine has just computed them) stay."""
        if (self._pend.picks or self._pend.parked) and (usage.prompt_tokens or usage.completion_tokens):
            self._ran(request, endpoint)  # (the engine's usage: its prefill ran; rev-b34 F1)
        if not usage.cached_reported:
            return  # (0 would mean unknown, not "nothing cached")
        claim = self._claims.pop(request.request_id, None)
        if claim is None or claim.address != endpoint.address:
            return
        if claim.block_tokens != self._chunk_tokens:
            return  # the index was cleared and re-keyed since
        n = len(claim.seqs)
        if claim.text_chars:
            # Text blocks are ``chunk`` characters: the engine's tokens map to them only on average, so
            # act only when it held less than TEXT_SHARE of what the index claimed.
            if not usage.prompt_tokens:
                return
            chunk = claim.block_tokens * CHARS_PER_TOKEN
            j = usage.cached_tokens * claim.text_chars // (usage.prompt_tokens * chunk)
            if j >= TEXT_SHARE * n - 1:
                return
        else:
            j = usage.cached_tokens // claim.block_tokens
            if j + 1 >= n:
                return
        seq = claim.seqs[j]
        if seq:
            firsts, lasts = self._in_use(endpoint.address)
            self.forgotten += self.index.forget_through(endpoint.address, seq, keep=(firsts, lasts))


def find_prefix_plugin(handle: PluginHandle, name: str | None) -> PrefixCacheScorer:
    """The named prefix scorer (or the index of the named ``approx-prefix-cache-producer``), else the first
    configured scorer, else the first producer's index, else a private one with defaults."""
    p: Plugin | None = handle.plugin(name) if name else handle.find(PrefixCacheScorer)
    if p is None and not name:
        p = handle.find(ApproxPrefixCacheProducer)
    if isinstance(p, PrefixCacheScorer):
        return p
    if isinstance(p, ApproxPrefixCacheProducer):
        return p.index()
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


class PrefixCacheAffinityFilter(UsesPrefixPlugin, Filter):
    """Sticky until saturated: keep the endpoints holding most of the prompt's prefix, unless every one
    of them is overloaded (then pass all through so load-aware scorers can spread the work).

    kvgate's rule: keeps endpoints with match ratio >= ``threshold`` and within ``slack`` of the best;
    overloaded = scraped queue >= ``queueThreshold`` or KV >= ``kvCacheUtilThreshold`` (fresh metrics), or
    in-flight requests >= ``maxInFlight``. A config that sets the reference's keys (``affinityThreshold``,
    ``maxTTFTPenaltyMs``, ``peakPrefillThroughput``, ...) gets the reference's rule instead
    (``affinity_gate``).
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
        gate: AffinityGate | None = None,
        path: str = "",
    ) -> None:
        super().__init__(name, handle)
        self.prefix_ref = prefix_ref
        self._prefix: PrefixCacheScorer | None = None
        self.threshold = threshold
        self.slack = slack
        self.queue_threshold = queue_threshold
        self.kv_threshold = kv_threshold
        self.max_inflight = max_inflight
        self.gate = gate  # the reference's rule, when the config asked for it
        self.path = path
        self._oracle: TTFTOracle | None = None

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> PrefixCacheAffinityFilter:
        # (the reference's producer name: the config rewrites it to prefixPluginRef before this; read here so
        # an unknown-key error lists it among the keys the filter takes, review s28-rev-docs28 F8)
        ref_key, producer_key = params.get_str("prefixPluginRef", ""), params.get_str(PRODUCER_KEY, "")
        ref = ref_key or producer_key or None
        if any(params.has(k) for k in REFERENCE_KEYS):
            f = cls(name, handle, ref, gate=read_gate(params), path=params.path)
            params.finish()
            return f
        f = cls(
            name,
            handle,
            ref,
            threshold=params.get_float("threshold", 0.5, min=0.0, max=1.0),
            slack=params.get_float("slack", 0.1, min=0.0, max=1.0),
            queue_threshold=params.get_int("queueThreshold", 5, min=1),
            kv_threshold=params.get_float("kvCacheUtilThreshold", 0.8, min=0.0, max=1.0),
            max_inflight=params.get_int("maxInFlight", 64, min=1),
            path=params.path,
        )
        params.finish()
        return f

    @property
    def oracle(self) -> TTFTOracle:
        """The latency model the reference rule's ``ttftSource: latencyPredictor`` reads (resolved once)."""
        if self._oracle is None:
            ref = self.gate.predictor_ref if self.gate else ""
            p = self.handle.plugin(ref) if ref else self.handle.find(TTFTOracle)
            if not isinstance(p, TTFTOracle):
                key = "latencyPredictionInfoProducerName" if ref else "ttftSource"
                raise ConfigError(
                    f"{self.path}.{key}",
                    f"{ref or 'latencyPredictor'!r}: no predicted-latency-scorer in plugins",
                )
            self._oracle = p
        return self._oracle

    def dependencies(self) -> list[Plugin]:
        deps = super().dependencies()
        # The latency model must learn (its post-pick and response hooks) though no profile scores with it.
        return [*deps, self.oracle] if self.gate is not None and self.gate.uses_predictor else deps

    def overloaded(self, ep: Endpoint, now: float) -> bool:
        if ep.inflight.requests >= self.max_inflight:
            return True
        m = ep.metrics
        return self.handle.fresh(ep, now) and (
            m.waiting_queue_size >= self.queue_threshold or m.kv_cache_usage >= self.kv_threshold
        )

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        m = prefix_match(cycle)
        if self.gate is not None:
            return self._reference_filter(cycle, endpoints, m)
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

    def _reference_filter(
        self, cycle: CycleState, endpoints: list[Endpoint], m: PrefixMatch | None
    ) -> list[Endpoint]:
        """The reference's order: one endpoint or threshold 0 -> all; exploration -> all; no sticky
        endpoint -> all; the load gate broken -> all; else the sticky ones."""
        gate = self.gate
        assert gate is not None
        if len(endpoints) <= 1 or gate.threshold <= 0 or m is None or not m.matched:
            return endpoints
        if gate.exploration > 0 and self.handle.rng.random() < gate.exploration:
            return endpoints
        sticky = gate.sticky([m.ratio(ep.address) for ep in endpoints])
        if not any(sticky):
            return endpoints
        tokens = [ep.inflight.pending_prefill_tokens for ep in endpoints]
        if gate.max_ttft_penalty_ms <= 0:  # the reference's "always stick": no TTFT read (nor a predictor)
            ttft = [0.0] * len(endpoints)
        elif gate.uses_predictor:  # (its oracle resolved at build: dependencies())
            ttft = [e.mean * 1000.0 for e in self.oracle.ttft_estimates(cycle, endpoints)]
        else:
            ttft = [gate.ttft_ms(t) for t in tokens]
        if gate.breaks(sticky, ttft, tokens):
            add_explanation(cycle, f"{self.name}.load_gate", "broken: all endpoints kept")
            return endpoints
        return [ep for ep, s in zip(endpoints, sticky, strict=True) if s]


# Registered below the classes, not by decorator: mypyc (scripts/build_compiled.py) cannot compile those.
register(APPROX_PRODUCER)(ApproxPrefixCacheProducer)
register("prefix-cache-scorer")(PrefixCacheScorer)
register("prefix-cache-affinity-filter")(PrefixCacheAffinityFilter)
