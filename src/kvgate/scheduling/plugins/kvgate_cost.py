"""``kvgate-cost-scorer``: prefix affinity that yields when the preferred endpoint is overloaded.

Each endpoint gets an expected cost in prefill-token equivalents of sending it this request:

    cost = tokens_ahead + uncached + decodeWeight * requests + kv_penalty   (+ saturation override)

- ``uncached`` = prompt tokens * (1 - prefix match ratio at that endpoint): what a hit saves.
- ``tokens_ahead`` = uncached prefill tokens already dispatched there and not yet started
  (``InFlight.pending_prefill_tokens``, no scrape lag), or, if larger, the scraped waiting queue times
  the mean prompt size (work other gateway replicas sent, seen only through ``/metrics``).
- ``requests`` = requests in flight there (own count, or the scraped running + waiting if larger):
  each will hold a batch slot and slow every engine step a little, even when its prompt was cached.
- ``kv_penalty`` grows past ``kvHigh`` KV utilisation: near-full caches preempt and evict.
- Saturated endpoints (fresh queue >= ``queueThreshold`` or KV >= ``kvCacheUtilThreshold``, or in-flight
  requests >= ``maxInFlight``; both thresholds 0 = off) get ``saturationPenalty`` unless every
  candidate is saturated.
- ``missQueueScale``: going to an endpoint that holds less of the prompt than the best one also costs
  ``missPenalty``-weighted lost prefix tokens x (requests not yet started there) / ``missQueueScale``:
  recomputing a prefix behind a backlog delays everything queued there and evicts other groups'
  prefixes. Idle endpoints pay nothing extra, so light-load spilling is unchanged; under overload
  groups stay partitioned and the fleet keeps its throughput.

- ``sharedCopy``: the displacement part of recomputing a prefix another candidate holds (``missPenalty``
  x KV fill x the lost prefix tokens) is divided by 1 + the requests already picked for the best holder,
  not yet at their first token, that share this prompt's prefix as deep as the holder holds it. A burst
  of one prefix that finds it cold queues behind one prefill of it plus every follower's question; a
  second copy serves the burst's later requests too, so its displacement is shared by the requests
  that want it at the same time. A lone request (a chat turn) pays the full displacement as before.
  Prompts are compared by the prefix source's chained block keys: the approximate scorer's hashes, or
  the precise scorer's keys (its pick credit makes a burst's first replica the holder at once).

- ``headOfLine`` (off): the requests that will arrive at an endpoint while it computes this request's
  uncached tokens wait for them (they hold their contexts there: moving them recomputes those). So
  placing ``u`` uncached tokens behind ``ahead`` tokens also costs, in token-times, the arrivals expected
  there meanwhile times the delay each gets: ``rate x spt x u x (ahead + u / 2)``, with ``rate`` the
  endpoint's arrival rate (requests this picker sent it per second, decayed over ``RATE_WINDOW_S``;
  with ``--workers N`` each worker's picker sees about 1/N of it, so the term is that much weaker) and
  ``spt`` the learned seconds per prefill token (first-token time over the tokens to compute ahead of
  and in the request, for picks with at least ``SPT_MIN_TOKENS`` of them). A long cold prefill (a
  context recomputed off its holder, a burst's second copy) is charged for the warm requests it will
  block; a cached request's few tokens hardly move. Nothing is charged until ``spt`` is learned (the
  median of its first ``SPT_WARMUP`` samples, then a moving mean with each sample clamped to within
  ``SPT_CLAMP`` times it; only streamed, successful replies teach it: the Director's ``learn``). Off by
  default: in the fleet simulator it helped the precise profile on one shared-prefix seed and lost on
  others and on the default profile (docs/benchmarks.md).

- ``coldWarmDelay`` (off): a request no candidate holds (best match under ``COLD_MATCH`` of the prompt:
  a customer's first request, a context evicted everywhere) delays the warm requests that reach its
  replica while it waits and computes: they hold their contexts there, so they queue behind it. Its
  ``u`` uncached tokens therefore also cost ``warm_rate x spt x u x (ahead + u / 2)`` token-times, with
  ``warm_rate`` the endpoint's rate of warm picks (this picker's picks that found at least ``COLD_MATCH``
  of their prompt cached there, decayed over ``RATE_WINDOW_S``) and ``spt`` learned as for
  ``headOfLine``. ``headOfLine`` prices every request against all arrivals; this prices cold work only,
  against the arrivals it blocks: the load-weighed form of sglang cache_aware sending a cold request to
  its smallest tree (the replica holding the fewest customers gets the fewest warm arrivals). Warm
  requests' costs are unchanged. With ``--workers N`` each worker counts only its own picks.

- ``replicateLoaded`` (off): when every best holder of the prompt's prefix has more prefill queued in
  front of it than a hit there saves, a second copy on a replica with nothing queued is charged its
  prefill only (no displacement or backlog premium); the index then counts both as holders. Off by
  default: in the fleet simulator it lowered hit rates and raised p90 TTFT (docs/scheduling.md).

- ``coldSpread`` (off): a request no candidate holds (its best match covers under ``COLD_MATCH`` of the
  prompt: a new session, a one-off, a context or tenant prefix evicted everywhere) is placed where its
  blocks evict the least reused cache. Its uncached tokens displace a replica's least recently used
  blocks; what those are worth differs by replica: one whose cache keeps serving hits (a tenant's
  prefix between its bursts, sessions' contexts) loses reuse, one that serves cold work (one-offs)
  loses little. So the cold prompt's ``uncached`` tokens also cost ``missPenalty`` x (the replica's
  reuse rate - the lowest) / the mean reuse rate, at most ``missPenalty`` (an evicted token costs at
  most one more full-cache displacement: without the bound, a fleet whose hits sit on one replica
  prices the others up to n times cheaper, outweighing every load term), the reuse rate being the
  prompt tokens found cached in the picks this picker sent there, decayed over ``coldSpreadWindow``
  seconds (default 120: several reuse intervals of a tenant's prefix). A load-balanced form of sglang
  cache_aware's "smallest tree" rule (cold work onto the replica holding the least): the term is one
  more cost, weighed against the load terms in the same tokens, not a rule that piles cold work onto
  one replica. Warm requests are not affected, nor are replicas with equal reuse. With ``--workers N``
  each worker counts only its own picks (not measured; the workers split connections, not requests).
  ``coldSpreadDecodeHeavy`` (off; needs ``coldSpread``, or the config is refused naming the key): only a
  cold request whose ``max_tokens`` exceeds its prompt tokens pays (a decode-heavy one-off: the output
  the engine caches is most of what it writes, and nothing reuses it), while new sessions and lost
  contexts are placed as without ``coldSpread``: on family c the gain comes from the one-offs, and
  steering the rest is what shared-prefix and family a paid for (docs/benchmarks/fleet-multiturn-s30.md).

- ``copyByWait`` (off): a request whose prefix a candidate holds goes to one holding less (a second
  copy of the prefix) only if it reaches its first token sooner there: its own wait, the part of the
  cost it waits on itself (tokens ahead + its uncached tokens + ``decodeWeight`` x requests in flight,
  pace-scaled, + the KV penalty), must be below every best holder's. Otherwise the copy costs the
  cheapest holder's cost plus its longer wait, plus a token (a tie stays at the holder). The premiums
  a copy pays for others (displacement, backlog, the optional terms) still rank the candidates, but
  cannot make a copy win: a copy whose request waits as long as at the holder only adds its prefill
  to another replica's queue (a burst's second copy computes the prefix the holder is computing or
  already has). A p90 counts requests in the slow band, and a copy of a prefix that alone takes the
  band's time takes no request out of it (docs/benchmarks/fleet-multiturn-s33.md).

- ``evictionPrice`` (off: opt-in; docs/benchmarks.md "Session 20" for why): what a request's write evicts
  at each candidate, priced in expected recompute (``eviction_price.py``). Its uncached tokens and its
  ``max_tokens`` move every prefix cached there ``u / w`` seconds closer to the LRU end (``w`` the tokens
  written there per second), so each prefix reused before (a session context: one waiter; a tenant prefix:
  a burst's ``n``) is lost with the LRU hazard of that shift before its next reuse; the price is its
  tokens x waiters x that chance, each waiter weighted by how much likelier the recompute makes it to land
  in the slowest 10% of recent first-token times. Every request pays, at each candidate, its price there
  less the cheapest candidate's, at most ``missPenalty`` per token written; a burst's request pays
  ``1 / n`` and never for its own prefix. Learned from this picker's picks with the approximate prefix
  scorer's keys (with the precise scorer as the source it prices nothing). Validated once, pre-registered,
  on fresh seeds as a per-prefix sum (docs/benchmarks.md "Session 19"); read since session 20 off a grid
  per replica in constant work per candidate, which failed its own pre-registered rule for the default
  (docs/benchmarks.md "Session 20").
  ``evictionPriceMaxKv`` (0: always) prices only while the candidates' mean scraped KV use is under that
  fraction: past it running requests hold the fleet's cache, and writes moved off the prefixes' holders
  piled onto the others until they queued (family c seeds tipped into overload;
  docs/benchmarks/fleet-multiturn-s36.md).

- ``tieToEmptier`` (off; docs/scheduling.md says why): candidates tied at the lowest cost (an idle fleet's
  cold prompt: nothing held, nothing in flight, vLLM's KV use back at 0 between requests) go to the one
  whose cache the prefix source believes emptier (its entries, with the precise source its engine-reported
  blocks and pending pick credit, over its capacity): sglang cache_aware's "smallest tree" for a request
  under its cache threshold, as a tie-break only (at most ``TIE_TOKENS``, and never past a higher cost).
  Without it the picker's random draw placed each tenant's first request, and on a 2-server real-vLLM run 7
  of 8 tenants landed on one server, which then evicted them (docs/benchmarks/realvllm.md section 4.22).
  Equally full candidates are still drawn at random.

- ``committedKv`` (off): the KV an endpoint's in-flight requests will need at their joint peak (their
  prompts, a shared prefix once, and the output each may still write: ``kv_commit.py``) against its cache
  (``num_gpu_blocks`` x ``block_size``); the tokens by which this request would push that peak past the
  cache cost a miss each (vLLM makes room by preempting and recomputing). Scraped KV use cannot see it:
  a replica that took many decode-heavy requests looks roomy until their outputs grow. Nothing is priced
  where the cache size is unknown (docs/benchmarks/fleet-multiturn-s35.md).

A prefix holder therefore keeps its traffic until the queue in front of it costs more than
recomputing the prefix elsewhere — affinity yields by arithmetic, not by a tuned switch — and the
load it is judged by includes everything this picker dispatched a microsecond ago.
Score = (c_min + s) / (c + s) with s = the request's own prompt tokens: in (0, 1], 1 for the cheapest,
so the max-score picker picks the cheapest endpoint and blending with other scorers stays sensible.

The prefix signal comes from the approximate ``prefix-cache-scorer`` (its ``PrefixMatch``), or from a
``precise-prefix-cache-scorer`` (cached tokens per endpoint from the engines' KV events) when
``prefixPluginRef`` names one, or when the config has a precise scorer and no approximate one.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from itertools import islice

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.store import StoreChange
from kvgate.scheduling.framework import (
    ConfigError,
    CycleState,
    Params,
    Plugin,
    PluginHandle,
    PostPick,
    ResponseObserver,
    Scorer,
    add_explanation,
    publish_cache_expectation,
)
from kvgate.scheduling.plugins.eviction_price import EvictionLedger
from kvgate.scheduling.plugins.kv_commit import KVCommitLedger
from kvgate.scheduling.plugins.precise_prefix import CYCLE_KEY as PRECISE_KEY
from kvgate.scheduling.plugins.precise_prefix import PrecisePrefixCacheScorer
from kvgate.scheduling.plugins.prefix_cache import CYCLE_KEY as PREFIX_KEY
from kvgate.scheduling.plugins.prefix_cache import (
    TAIL_STRIDE,
    PrefixCacheScorer,
    PrefixMatch,
    UsesPrefixPlugin,
    prefix_match,
)
from kvgate.scheduling.prefix import CHARS_PER_TOKEN
from kvgate.scheduling.registry import register
from kvgate.scheduling.types import InferenceRequest, prompt_tokens

# Requests remembered as waiting for their first token (for ``sharedCopy``); the oldest are dropped past
# this, so a request whose response events never come cannot grow the map.
MAX_WAITING_TRACKED = 4096
_U64 = (1 << 64) - 1  # waiting requests' hashes are kept as 64-bit words
# A pick compares this request's prefix with at most this many of the holder's most recently picked
# waiting requests (a burst is recent; a longer queue is the backlog terms' business): O(1) per pick.
WAITING_SCAN = 128
# headOfLine: arrival rates decay with this time constant (long against one prefill, short against a
# workload's drift), and seconds per prefill token are learned from picks that compute at least this
# many tokens before their first one (shorter ones are mostly the step's fixed overhead).
RATE_WINDOW_S = 30.0
SPT_MIN_TOKENS = 1024
# ``spt`` starts from the median of its first SPT_WARMUP samples (one odd first token does not set it),
# then each sample moves it 10%, clamped to within SPT_CLAMP times the current value either way.
SPT_WARMUP = 5
SPT_CLAMP = 4.0
MAX_ENDPOINTS_TRACKED = 4096  # arrival rates (and coldSpread reuse rates) kept for this many endpoints
# coldSpread: a request whose best match covers less than this share of its prompt has no holder (as
# sglang cache_aware's cacheThreshold, 0.3).
COLD_MATCH = 0.3
# tieToEmptier: candidates tied at the lowest cost are set apart by at most this many tokens (their caches'
# fill share of it): a tie-break, below any difference the cost itself makes.
TIE_TOKENS = 1.0


class _TailExpectation:
    """The approximate match, with at least ``floor`` of the prompt uncached anywhere (burstTail)."""

    __slots__ = ("floor", "m")

    def __init__(self, m: PrefixMatch, floor: float) -> None:
        self.m, self.floor = m, floor

    def uncached_fraction(self, address: str) -> float:
        return max(self.floor, self.m.uncached_fraction(address))


def _copy_only_if_sooner(costs: list[float], waits: list[float], copies: list[bool]) -> None:
    """copyByWait: a candidate that would compute a second copy of the prefix wins over the holders only
    if this request's own wait there is shorter than at every holder; otherwise it costs the cheapest
    holder's cost plus how much longer it waits, plus one token (a tie stays at the holder). In place;
    ``copies[i]``: candidate i holds less than the best holder."""
    hold_wait = hold_cost = math.inf
    for c, w, copy in zip(costs, waits, copies, strict=True):
        if not copy:
            if w < hold_wait:
                hold_wait = w
            if c < hold_cost:
                hold_cost = c
    if hold_cost == math.inf:
        return  # (no candidate holds it: a filter removed the holders)
    for i, w in enumerate(waits):
        if copies[i] and w >= hold_wait:
            floor = hold_cost + (w - hold_wait) + 1.0
            if costs[i] < floor:
                costs[i] = floor


def _count(counts: dict[str, tuple[float, float]], address: str, now: float) -> None:
    """One more pick at ``address`` in a decayed count (headOfLine, coldWarmDelay), bounded in endpoints."""
    n, t = counts.get(address, (0.0, now))
    # (max: a clock that steps back, or workers' clocks apart, must not grow the count)
    counts[address] = (n * math.exp(-max(0.0, now - t) / RATE_WINDOW_S) + 1.0, max(now, t))
    if len(counts) > MAX_ENDPOINTS_TRACKED:  # endpoints gone: forget the longest unpicked
        del counts[min(counts, key=lambda k: counts[k][1])]


def _overflow(
    commit: KVCommitLedger,
    address: str,
    capacity: float,
    now: float,
    keys: Sequence[int],
    per: float,
    own: float,
    out: float,
    seqs: int,
) -> float:
    """committedKv: the tokens by which this request would push ``address``'s peak KV need past its cache
    (only the part it adds: an endpoint already over pays for this request's whole addition). vLLM frees
    room by preempting the newest running requests and recomputing them, so each token over is a token
    computed again: priced as a miss. The ledger's running bound first: where it fits the cache (most
    picks) no scan of the endpoint's in-flight requests is needed (review rev-a35 F1)."""
    if commit.bound(address, keys, per, own, out) <= capacity:
        return 0.0
    after = commit.peak(address, now, keys, per, own, out, seqs)
    if after <= capacity:
        return 0.0
    before = commit.bound(address)
    if before > capacity:
        before = commit.peak(address, now)
    return after - (before if before > capacity else capacity)


class KVGateCostScorer(UsesPrefixPlugin, Scorer, PostPick, ResponseObserver):
    bounded = True

    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        *,
        prefix_ref: str | None = None,
        decode_weight: float = 32.0,
        kv_high: float = 0.9,
        miss_penalty: float = 2.0,
        queue_threshold: int = 0,
        kv_threshold: float = 1.0,
        max_inflight: int = 0,
        saturation_penalty: float = 1e6,
        miss_queue_scale: float = 1.0,
        kv_scaled_miss: bool = True,
        learn_pace: bool = True,
        shared_copy: bool = True,
        replicate_loaded: bool = False,
        head_of_line: bool = False,
        burst_tail: bool = False,
        output_displacement: bool = False,
        cold_spread: bool = False,
        cold_spread_window: float = 120.0,
        cold_spread_decode_heavy: bool = False,
        eviction_price: bool = False,
        eviction_price_max_kv: float = 0.0,
        copy_by_wait: bool = False,
        tie_to_emptier: bool = False,
        committed_kv: bool = False,
        cold_warm_delay: bool = False,
    ) -> None:
        super().__init__(name, handle)
        self.prefix_ref = prefix_ref
        self._prefix: PrefixCacheScorer | None = None
        self._precise: PrecisePrefixCacheScorer | None = None
        self._resolved = False
        self.decode_weight = decode_weight
        self.kv_high = kv_high
        self.miss_penalty = miss_penalty
        self.queue_threshold = queue_threshold
        self.kv_threshold = kv_threshold
        self.max_inflight = max_inflight
        self.saturation_penalty = saturation_penalty
        self.miss_queue_scale = miss_queue_scale
        self.kv_scaled_miss = kv_scaled_miss
        self.learn_pace = learn_pace
        self.shared_copy = shared_copy
        self.replicate_loaded = replicate_loaded
        self.head_of_line = head_of_line
        self.burst_tail = burst_tail
        self.output_displacement = output_displacement
        self.cold_spread = cold_spread
        self.cold_spread_window = cold_spread_window
        self.cold_spread_decode_heavy = cold_spread_decode_heavy
        self.copy_by_wait = copy_by_wait
        self.tie_to_emptier = tie_to_emptier
        self.cold_warm_delay = cold_warm_delay
        # coldWarmDelay: per endpoint (decayed count of warm picks, its time).
        self._warm: dict[str, tuple[float, float]] = {}
        # committedKv: what each endpoint's in-flight requests will hold at their peak (kv_commit.py).
        self.commit: KVCommitLedger | None = KVCommitLedger() if committed_kv else None
        # evictionPrice: what each request's write evicts at each replica, priced (eviction_price.py).
        self.eviction: EvictionLedger | None = EvictionLedger() if eviction_price else None
        self.eviction_price_max_kv = eviction_price_max_kv
        # coldSpread: per endpoint (decayed prompt tokens found cached there, its time).
        self._reused: dict[str, tuple[float, float]] = {}
        # burstTail: waiting requests' tail keys past the prefix scorer's hashed window (request id ->
        # keys), for prompts that overflow it.
        self._tails: dict[str, array[int]] = {}
        # headOfLine: per endpoint (decayed arrival count, its time); learned seconds per prefill token
        # (0 until learned); picks waiting for their first token: request id -> (pick time, tokens to
        # compute there up to and including its own).
        self._arrivals: dict[str, tuple[float, float]] = {}
        self.spt = 0.0
        self._spt_first: list[float] = []  # the first samples, until SPT_WARMUP of them
        self._timed: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # Requests picked and not yet at their first token, with their prompt's block hashes: request
        # id -> endpoint, and per endpoint request id -> hashes (so a pick scans one endpoint's only).
        self._waiting: OrderedDict[str, str] = OrderedDict()
        # Hashes as 64-bit words (array 'Q': 8 bytes each, not a list of Python ints: up to 2,048 keys per
        # request times MAX_WAITING_TRACKED requests).
        self._waiting_at: dict[str, dict[str, array[int]]] = {}
        # EWMA of the uncached prompt tokens per dispatched request: converts scraped queue lengths this
        # picker cannot explain (other gateways' traffic) into tokens.
        self.mean_uncached = 512.0
        if cold_warm_delay and handle.store is not None:
            # A removed endpoint's cached prefixes are gone from the prefix index: none of its warm picks
            # can recur until it caches again (rev-d35 F2).
            handle.store.add_listener(self._on_store_change)

    def _on_store_change(self, change: StoreChange) -> None:
        if change.kind == "removed":
            self._warm.pop(change.endpoint.address, None)

    def take_learned(self, prev: KVGateCostScorer) -> None:
        """A reload with this scorer's settings unchanged: keep what ``prev`` learned (seconds per
        prefill token, the arrival and warm rates), so headOfLine and coldWarmDelay price at once
        (rev-d35 F3). Copies: the old picker's late finishes must not write into the new one's."""
        self.spt = prev.spt
        self._spt_first = list(prev._spt_first)
        self._arrivals = dict(prev._arrivals)
        self._warm = dict(prev._warm)

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> KVGateCostScorer:
        s = cls(
            name,
            handle,
            prefix_ref=params.get_str("prefixPluginRef", "") or None,
            decode_weight=params.get_float("decodeWeight", 32.0, min=0.0),
            kv_high=params.get_float("kvHigh", 0.9, min=0.0, max=1.0),
            miss_penalty=params.get_float("missPenalty", 2.0, min=0.0),
            queue_threshold=params.get_int("queueThreshold", 0, min=0),
            kv_threshold=params.get_float("kvCacheUtilThreshold", 1.0, min=0.0, max=1.0),
            max_inflight=params.get_int("maxInFlight", 0, min=0),
            saturation_penalty=params.get_float("saturationPenalty", 1e6, min=0.0),
            miss_queue_scale=params.get_float("missQueueScale", 1.0, min=0.0),
            kv_scaled_miss=params.get_bool("kvScaledMiss", True),
            learn_pace=params.get_bool("learnPace", True),
            shared_copy=params.get_bool("sharedCopy", True),
            replicate_loaded=params.get_bool("replicateLoaded", False),
            head_of_line=params.get_bool("headOfLine", False),
            burst_tail=params.get_bool("burstTail", False),
            output_displacement=params.get_bool("outputDisplacement", False),
            cold_spread=params.get_bool("coldSpread", False),
            cold_spread_window=params.get_duration("coldSpreadWindow", 120.0, positive=True),
            cold_spread_decode_heavy=params.get_bool("coldSpreadDecodeHeavy", False),
            eviction_price=params.get_bool("evictionPrice", False),
            eviction_price_max_kv=params.get_float("evictionPriceMaxKv", 0.0, min=0.0, max=1.0),
            copy_by_wait=params.get_bool("copyByWait", False),
            tie_to_emptier=params.get_bool("tieToEmptier", False),
            committed_kv=params.get_bool("committedKv", False),
            cold_warm_delay=params.get_bool("coldWarmDelay", False),
        )
        params.finish()
        if s.cold_spread_decode_heavy and not s.cold_spread:
            # It narrows coldSpread's price: alone it would do nothing, silently.
            raise ConfigError(
                f"{params.path}.coldSpreadDecodeHeavy",
                "needs coldSpread: true (it narrows coldSpread's price to decode-heavy cold requests)",
            )
        if s.eviction_price_max_kv and s.eviction is None:
            raise ConfigError(
                f"{params.path}.evictionPriceMaxKv",
                "needs evictionPrice: true (it gates evictionPrice's price on the fleet's KV use)",
            )
        return s

    @property
    def precise(self) -> PrecisePrefixCacheScorer | None:
        """The precise scorer this one reads its prefix signal from, if any (resolved on first use)."""
        if not self._resolved:
            self._resolved = True
            h = self.handle
            p = h.plugin(self.prefix_ref) if self.prefix_ref else None
            if p is None and not self.prefix_ref and h.find(PrefixCacheScorer) is None:
                p = h.find(PrecisePrefixCacheScorer)
            self._precise = p if isinstance(p, PrecisePrefixCacheScorer) else None
        return self._precise

    def dependencies(self) -> list[Plugin]:
        # The profile must run the source's producer and post-pick hooks even if it does not score.
        precise = self.precise
        return [precise] if precise is not None else [self.prefix]

    def _precise_cached(self, cycle: CycleState, p: int) -> dict[str, int]:
        """Cached prompt tokens per endpoint (non-zero only) from the precise scorer's match."""
        got = cycle.data.get(PRECISE_KEY)
        if not isinstance(got, dict):
            return {}
        return {a: min(t, p) for a, t in got.items() if t}

    def costs(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        req = cycle.request
        # (``prompt_tokens`` inlined for a request with its estimate, ``precise`` once resolved)
        p = req.prompt_tokens
        if p <= 0:
            p = prompt_tokens(p, req.prompt_text, req.token_ids)
        matched: dict[str, int]
        held: dict[str, float] | dict[str, int]
        precise_src = (self._precise if self._resolved else self.precise) is not None
        if precise_src:
            matched, per_block = self._precise_cached(cycle, p), 1.0  # already in tokens
            held = matched
        else:
            m = cycle.data.get(PREFIX_KEY)  # (``prefix_match`` inlined: once per pick)
            if not isinstance(m, PrefixMatch):
                m = None
            # Hot loop (once per endpoint per pick): locals only, freshness and match ratio inlined.
            matched = m.matched if m is not None and m.hashes else {}
            per_block = p / len(m.hashes) if matched and m is not None else 0.0
            held = matched
            if matched and m is not None and m.data:
                # A prompt past the hashed window: a partial match is its blocks' share of the whole
                # prompt, a whole-window one extrapolated (``PrefixMatch.held_share``; review s21-fixes-a L4).
                n = len(m.hashes)
                part = m.chunk * n / len(m.data)
                held = {a: b if b >= n else b * part for a, b in matched.items()}
        miss_penalty = self.miss_penalty
        kv_scaled = self.kv_scaled_miss
        now = cycle.now
        staleness = self.handle.staleness
        mean_uncached = self.mean_uncached
        decode_weight = self.decode_weight
        # (plain assignments, ``max`` and ``enumerate`` as loops or conditionals, and the lists below built
        # only for the options that use them: the same floats in the same order, fewer calls per pick)
        kv_high = self.kv_high
        kv_thr = self.kv_threshold
        q_thr = self.queue_threshold
        max_inf = self.max_inflight
        kv_scale = (p if p > 1024 else 1024) / (1.0 - kv_high + 1e-9)
        mqs = self.miss_queue_scale
        get = held.get
        # Fewest uncached tokens among these candidates (a filter may have removed the best holder):
        # what is lost by going elsewhere is the prefix beyond that.
        best_ep: Endpoint | None = None  # (the first most held: ``_waiting_on_prefix``'s holder)
        if matched:
            best_ep = endpoints[0]
            most = get(best_ep.address, 0)  # (``max``'s first most held, by a loop: no generator)
            for ep in endpoints:
                h = get(ep.address, 0)
                if h > most:
                    most = h
                    best_ep = ep
            best_uncached = p - most * per_block
        else:
            best_uncached = p - 0.0
        # A copy of a prefix that other requests are waiting on right now (a burst) is shared by them:
        # its displacement of other groups' blocks is split over this request and those waiting.
        tail_shared: list[int] | None = None
        share = 1.0  # (``1.0 / (1 + 0)``)
        # (``_waiting_on_prefix`` is 0 without a match or a waiting request: not called then)
        if self.shared_copy and matched and self._waiting:
            tail_shared = []
            # The best holder found above is ``_waiting_on_prefix``'s (the first most held) where ``held``
            # is ``matched``: it gets that one alone, not the 64-candidate search again.
            holders = (best_ep,) if held is matched and best_ep is not None else endpoints
            share = 1.0 / (1 + self._waiting_on_prefix(cycle, holders, matched, tail_shared))
        # burstTail: a match of the whole hashed window is extrapolated over the prompt's unhashed tail,
        # as if the tail were cached too. When requests with this head are waiting at the holder (a
        # burst), the tail is compared with theirs: past the part they share, it is this request's own
        # (its question), uncached everywhere, and work the holder must do before it answers.
        tail = 0.0
        if tail_shared:
            m = prefix_match(cycle)
            if m is not None and m.data:
                shared_units = m.chunk * (len(m.hashes) + tail_shared[0] * TAIL_STRIDE)
                tail = p * max(0.0, 1.0 - shared_units / len(m.data))
                if best_uncached < tail:
                    best_uncached = tail
                if tail:
                    publish_cache_expectation(cycle, _TailExpectation(m, tail / p), override=True)
        # Learned pace (seconds per token-slot, load-independent: ``scheduling.speed``): the same tokens
        # take longer on a slower replica, so its costs are scaled by its pace over the fastest one's
        # (cost in time = work / speed).
        fastest = 0.0
        if self.learn_pace:
            # Only once every candidate's pace is known (a loop: a comprehension is a call in 3.11).
            for ep in endpoints:
                pace = ep.inflight.pace
                if not pace > 0.0:
                    fastest = 0.0
                    break
                if not fastest or pace < fastest:
                    fastest = pace
        spt = self.spt if self.head_of_line else 0.0
        # coldWarmDelay: only a prompt no candidate holds pays for the warm arrivals it will block.
        warm_spt = self.spt if self.cold_warm_delay and best_uncached > (1.0 - COLD_MATCH) * p else 0.0
        # coldSpread: a prompt no candidate holds costs more where the cache it evicts is reused more
        # (at most one more full-cache displacement per token).
        spread: list[float] | None = None
        if (
            self.cold_spread
            and best_uncached > (1.0 - COLD_MATCH) * p
            and (not self.cold_spread_decode_heavy or (req.max_tokens or 0) > p)
        ):
            # (coldSpreadDecodeHeavy: only a request that will write more output than its prompt pays)
            rates = [self.reuse_rate(ep.address, now) for ep in endpoints]
            mean = sum(rates) / len(rates)
            if mean > 0.0:
                low = min(rates)
                spread = [miss_penalty * min(1.0, (r - low) / mean) for r in rates]
        out_tokens = 0
        evict: list[float] | None = None
        ledger = self.eviction
        if self.output_displacement or ledger is not None:
            output = (req.max_tokens or 0) * req.sequences  # (each of ``n`` choices writes its own blocks)
            out_tokens = output if self.output_displacement else 0
            if ledger is not None and self.eviction_price_max_kv:
                # evictionPriceMaxKv: a fleet whose KV requests hold is past keeping prefixes; moving writes
                # off their holders then piles running requests on the others (queues, preemptions).
                kv_sum = 0.0
                for ep in endpoints:
                    kv_sum += ep.metrics.kv_cache_usage
                if kv_sum >= self.eviction_price_max_kv * len(endpoints):
                    ledger = None
            if ledger is not None and not precise_src:  # (it learns from the approximate index's keys)
                unc = [p - get(ep.address, 0) * per_block if matched else float(p) for ep in endpoints]
                mh = prefix_match(cycle)
                hs = mh.hashes if mh is not None else ()
                evict = ledger.prices(endpoints, unc, float(output), miss_penalty, now, hs)
        # committedKv: this request's peak KV (its prompt and output) against each candidate's
        # commitment; its prompt's block keys (each candidate's, under a precise source) count the blocks
        # in-flight requests there already hold once.
        commit = self.commit
        commit_keys: Sequence[int] = ()
        commit_per = 0.0
        commit_own = 0.0
        commit_out = 0.0
        seqs = req.sequences
        if commit is not None:
            commit_out = float((req.max_tokens or 0) * seqs)
            if not precise_src:
                commit_keys, commit_per, commit_own = self._commit_keys(cycle, "", p, False)
        # The optional terms' one test per endpoint (most picks have none of them).
        optional = (
            out_tokens or spread is not None or evict is not None or spt or warm_spt or commit is not None
        )
        costs: list[float] = []
        saturated: list[int] | None = None  # (the saturated candidates' indices: most picks have none)
        # replicateLoaded: per endpoint, the pace-scaled premium its lost prefix pays over a plain
        # prefill (displacement and backlog), and each best holder's pace-scaled tokens ahead.
        replicate = self.replicate_loaded and matched and best_uncached < p
        premiums: list[float] = []
        holder_ahead: list[float] = []
        # copyByWait: per endpoint, the cost's terms this request itself waits on (not the premiums it pays
        # for others), and whether going there makes a second copy of a prefix another candidate holds.
        by_wait = self.copy_by_wait and matched and best_uncached < p
        waits: list[float] = []
        copies: list[bool] = []
        i = -1
        for ep in endpoints:
            i += 1
            inf = ep.inflight
            ahead = float(inf.pending_prefill_tokens)  # (a float throughout: mypyc's compiled build)
            load = inf.requests
            # Requests not yet started there: own not-yet-first-token ones, or the fresh scraped queue.
            queued = load - inf.decoding
            sat = 0 < max_inf <= load
            cost = 0.0
            # A miss computes the prefix now and, when the cache is full, displaces others' cached
            # prefixes (recomputed later): the displacement share grows with the KV already in use.
            fill = 1.0
            met = ep.metrics
            t = met.updated_at
            if t is not None and now - t <= staleness:
                q = met.waiting_queue_size
                if q > queued:
                    queued = q
                if q:
                    # Only the part of the server's queue our own accounting does not explain.
                    extra = q - (load - inf.decoding)
                    if extra > 0:
                        ahead += extra * mean_uncached
                    if q_thr and q >= q_thr:
                        sat = True
                if met.running_requests + q > load:
                    load = met.running_requests + q
                kv = met.kv_cache_usage
                if kv_scaled:
                    fill = kv
                if kv > kv_high:
                    cost = (kv - kv_high) * kv_scale
                if kv >= kv_thr:
                    sat = True
            miss = 1.0 + miss_penalty * fill
            uncached = p - get(ep.address, 0) * per_block if matched else p
            if uncached < tail:
                uncached = tail
            # The prefix another candidate holds, computed again here (a second copy).
            lost = uncached - best_uncached if uncached > best_uncached else 0.0
            miss_lost = 1.0 + miss_penalty * fill * share
            work = ahead + miss * (uncached - lost) + miss_lost * lost + decode_weight * load
            if optional:
                if out_tokens:
                    # The output's blocks are cached too (vLLM keeps full blocks of generated tokens): they
                    # displace other prefixes as a miss's prompt blocks do, more where the cache is fuller.
                    work += (miss - 1.0) * out_tokens
                if spread is not None:
                    work += spread[i] * uncached
                if evict is not None:
                    work += evict[i]
                if spt:
                    # The arrivals expected while these tokens are computed, each delayed by them.
                    rate = self.arrival_rate(ep.address, now)
                    if warm_spt:  # (both options: the warm picks are among the arrivals, charged once: F4)
                        rate = max(rate, self.warm_rate(ep.address, now))
                    work += rate * spt * uncached * (ahead + 0.5 * uncached)
                elif warm_spt:
                    # The warm requests expected there while it waits and computes, each delayed by it.
                    work += self.warm_rate(ep.address, now) * warm_spt * uncached * (ahead + 0.5 * uncached)
                if commit is not None and met.num_gpu_blocks and met.block_size:
                    cap = float(met.num_gpu_blocks * met.block_size)
                    if precise_src:
                        commit_keys, commit_per, commit_own = self._commit_keys(cycle, ep.address, p, True)
                    work += miss * _overflow(
                        commit, ep.address, cap, now, commit_keys, commit_per, commit_own, commit_out, seqs
                    )
            backlog = 0.0
            if mqs and queued > 0 and lost:
                # Recomputing a prefix on a replica with a queue delays every request queued there,
                # and the new copy evicts other groups' prefixes: under overload, spilling adds work
                # to a fleet with none to spare. Grows with that replica's backlog (requests), not
                # with its running batch.
                backlog = miss_lost * lost * queued / mqs
                work += backlog
            if fastest:
                scale = inf.pace / fastest
                work *= scale
            else:
                scale = 1.0  # (``work *= 1.0`` changes no float: not done)
            if by_wait:
                # Its own wait: tokens ahead, its prefill, the batch it joins, the full cache's risk.
                waits.append((ahead + uncached + decode_weight * load) * scale + cost)
                copies.append(lost > 0.0)
            if replicate:
                # Only onto a replica with nothing queued: the copy then delays no one.
                idle = ahead == 0 and queued <= 0
                premiums.append(((miss_lost - 1.0) * lost + backlog) * scale if idle else 0.0)
                if not lost and uncached == best_uncached:
                    holder_ahead.append(ahead * scale)
            costs.append(cost + work)
            if sat:
                if saturated is None:
                    saturated = []
                saturated.append(i)
        if replicate and holder_ahead and min(holder_ahead) > p - best_uncached:
            # Every best holder has more prefill queued in front of it than a hit there saves: the
            # prefix's demand exceeds what its holders serve in time, so a second copy is wanted and
            # costs its prefill only (the index then counts the new replica as a holder too).
            costs = [c - prem for c, prem in zip(costs, premiums, strict=True)]
        if by_wait:
            _copy_only_if_sooner(costs, waits, copies)
        if saturated and len(saturated) < len(costs):
            pen = self.saturation_penalty
            for i in saturated:
                costs[i] += pen
        if cycle.explain:
            add_explanation(cycle, "costs", {ep.address: c for ep, c in zip(endpoints, costs, strict=True)})
        return costs

    def _waiting_on_prefix(
        self,
        cycle: CycleState,
        endpoints: Sequence[Endpoint],
        matched: dict[str, int],
        tail_shared: list[int] | None = None,
    ) -> int:
        """Requests dispatched to the best prefix holder among ``endpoints``, not yet at their first
        token, whose prompts share this request's prefix as deep as that holder holds it. With
        ``burstTail``, when the holder holds the prompt's whole hashed window and the prompt overflows
        it, ``tail_shared`` gets the most tail keys this prompt shares with one of those requests."""
        if not matched or not self._waiting:
            return 0
        get = matched.get
        held = [get(ep.address, 0) for ep in endpoints]
        best = endpoints[held.index(max(held))].address  # (the first of the most held, as max(key=))
        keys, block_tokens = self._prompt_keys(cycle, best)
        # The precise match counts tokens, the approximate one blocks.
        depth = min(matched.get(best, 0) // block_tokens, len(keys))
        if not depth:
            return 0
        key = keys[depth - 1] & _U64  # chained hashes: equal here means the whole prefix is equal
        waiting = self._waiting_at.get(best)
        if not waiting:
            return 0
        recent = islice(reversed(waiting.items()), WAITING_SCAN)
        same = [rid for rid, h in recent if len(h) >= depth and h[depth - 1] == key]
        if same and tail_shared is not None and self.burst_tail and self.precise is None:
            m = prefix_match(cycle)
            if m is not None and m.data and depth == len(m.hashes):
                mine = m.tail_keys()
                most = 0
                for rid in same:
                    theirs = self._tails.get(rid)
                    if theirs is not None:
                        n = 0
                        for a, b in zip(mine, theirs, strict=False):
                            if a != b:
                                break
                            n += 1
                        most = max(most, n)
                tail_shared.append(most)
        return len(same)

    def _prompt_keys(self, cycle: CycleState, address: str) -> tuple[Sequence[int], int]:
        """This prompt's chained block keys as the prefix source matches them at ``address``, and the
        unit of that source's ``matched`` counts per key (1 block approximate, block-size tokens
        precise): the precise scorer's keys when it is the source (a burst's followers picked while the
        prefix is computed wait on it just the same), else the approximate scorer's hashes."""
        precise = self.precise
        if precise is not None:
            got = precise.prompt_keys(cycle, address)
            return got if got is not None else ((), 1)
        m = prefix_match(cycle)
        return (m.hashes, 1) if m is not None and m.hashes else ((), 1)

    def _commit_keys(
        self, cycle: CycleState, address: str, p: int, precise: bool
    ) -> tuple[Sequence[int], float, float]:
        """committedKv: the prompt's chained block keys (as matched at ``address`` under a precise source),
        the prompt tokens per key, and the prompt tokens past the keys."""
        if precise:
            keys, bs = self._prompt_keys(cycle, address)
            if not keys:
                return (), 0.0, float(p)
            return keys, float(bs), max(0.0, p - len(keys) * float(bs))
        m = prefix_match(cycle)
        if m is None or not m.hashes:
            return (), 0.0, float(p)
        # The hashes cover at most maxPrefixBlocksToMatch blocks: the prompt past them is its own, not
        # spread over the window's keys (review rev-e35 F1). (Capped at p / keys: an estimate under it.)
        n = len(m.hashes)
        per = min(m.chunk / (4 if m.by_ids else CHARS_PER_TOKEN), p / n)  # (ids: 4 bytes a token)
        return m.hashes, per, max(0.0, p - n * per)

    def _forget(self, request_id: str) -> None:
        self._tails.pop(request_id, None)
        addr = self._waiting.pop(request_id, None)
        if addr is not None:
            at = self._waiting_at[addr]
            del at[request_id]
            if not at:
                del self._waiting_at[addr]

    def on_picked(self, cycle: CycleState, endpoint: Endpoint) -> None:
        req = cycle.request
        p = req.prompt_tokens  # (``prompt_tokens`` inlined for a request with its estimate)
        if p <= 0:
            p = prompt_tokens(p, req.prompt_text, req.token_ids)
        uncached: float
        keys: Sequence[int]
        precise = self._precise if self._resolved else self.precise
        if precise is not None:
            uncached = float(p) - self._precise_cached(cycle, p).get(endpoint.address, 0)
        else:
            m = cycle.data.get(PREFIX_KEY)  # (``prefix_match`` inlined: once per pick)
            if not isinstance(m, PrefixMatch):
                m = None
                uncached = float(p)
            elif m.hashes:
                uncached = p * m.uncached_fraction(endpoint.address)
            else:  # (no block hashed: ``uncached_fraction`` is 1.0, without its two calls)
                uncached = p * 1.0
        if self.shared_copy:
            # (``_prompt_keys`` inlined for the approximate source: its hashes)
            if precise is not None:
                keys, _ = self._prompt_keys(cycle, endpoint.address)
            else:
                keys = m.hashes if m is not None else ()
            if keys:
                self._forget(req.request_id)  # picked again (a retry): only the latest pick waits
                self._waiting[req.request_id] = endpoint.address
                try:  # (the keys as they are, no list of masked ints, where they fit 64 bits unsigned)
                    compact = array("Q", keys)
                except OverflowError:  # (a key outside 0..2**64-1: its low 64 bits, as the scan compares)
                    compact = array("Q", [k & _U64 for k in keys])
                self._waiting_at.setdefault(endpoint.address, {})[req.request_id] = compact
                if self.burst_tail and self.precise is None:
                    m = prefix_match(cycle)
                    if m is not None and m.data:
                        self._tails[req.request_id] = m.tail_keys()
                if len(self._waiting) > MAX_WAITING_TRACKED:
                    self._forget(next(iter(self._waiting)))
        self.mean_uncached += 0.05 * (uncached - self.mean_uncached)
        if self.commit is not None:
            ck, per, own = self._commit_keys(cycle, endpoint.address, p, precise is not None)
            out = float((req.max_tokens or 0) * req.sequences)
            self.commit.picked(req.request_id, endpoint.address, ck, per, own, out, req.sequences)
        if self.cold_spread and uncached < p:
            self._add_reused(endpoint.address, p - uncached, cycle.now)
        ledger = self.eviction
        if ledger is not None and precise is None:
            mm = prefix_match(cycle)
            hs: Sequence[int] = mm.hashes if mm is not None else ()
            held = mm.matched.get(endpoint.address, 0) if mm is not None else 0
            met = endpoint.metrics
            cap = float(met.num_gpu_blocks * met.block_size) if met.num_gpu_blocks and met.block_size else 0.0
            ledger.picked(
                endpoint.address, hs, held, float(p), uncached, ledger.free_tokens(endpoint), cycle.now, cap
            )
            ledger.started(req.request_id, uncached, cycle.now)
        if self.cold_warm_delay and uncached <= (1.0 - COLD_MATCH) * p:
            _count(self._warm, endpoint.address, cycle.now)
        if self.head_of_line or self.cold_warm_delay:
            now = cycle.now
            if self.head_of_line:
                _count(self._arrivals, endpoint.address, now)
            todo = endpoint.inflight.pending_prefill_tokens + uncached
            if todo >= SPT_MIN_TOKENS:
                self._timed.pop(req.request_id, None)
                self._timed[req.request_id] = (now, todo)
                if len(self._timed) > MAX_WAITING_TRACKED:
                    self._timed.popitem(last=False)

    def _add_reused(self, address: str, tokens: float, now: float) -> None:
        reused = self._reused
        n, t = reused.get(address, (0.0, now))
        # (max: a clock that steps back must not grow the count)
        decay = math.exp(-max(0.0, now - t) / self.cold_spread_window)
        reused[address] = (n * decay + tokens, max(now, t))
        if len(reused) > MAX_ENDPOINTS_TRACKED:  # endpoints gone: forget the longest unreused
            del reused[min(reused, key=lambda k: reused[k][1])]

    def reuse_rate(self, address: str, now: float) -> float:
        """Prompt tokens per second found cached at ``address`` by this picker's picks there (the
        prefix source's match), decayed over ``coldSpreadWindow`` (coldSpread)."""
        got = self._reused.get(address)
        if got is None:
            return 0.0
        n, t = got
        w = self.cold_spread_window
        return n * math.exp(-max(0.0, now - t) / w) / w

    def arrival_rate(self, address: str, now: float) -> float:
        """Requests this picker sent ``address`` per second, decayed over ``RATE_WINDOW_S``."""
        got = self._arrivals.get(address)
        if got is None:
            return 0.0
        n, t = got
        return n * math.exp(-max(0.0, now - t) / RATE_WINDOW_S) / RATE_WINDOW_S

    def warm_rate(self, address: str, now: float) -> float:
        """Warm picks (at least ``COLD_MATCH`` of the prompt cached) this picker sent ``address`` per
        second, decayed over ``RATE_WINDOW_S`` (coldWarmDelay)."""
        got = self._warm.get(address)
        if got is None:
            return 0.0
        n, t = got
        return n * math.exp(-max(0.0, now - t) / RATE_WINDOW_S) / RATE_WINDOW_S

    def on_first_token(self, request: InferenceRequest, endpoint: Endpoint, now: float) -> None:
        if self._waiting or self._tails:  # (nothing waits: ``_forget`` has nothing to do, not called)
            self._forget(request.request_id)
        if self.eviction is not None:
            self.eviction.first_token(request.request_id, now)
        if self.commit is not None:
            self.commit.first_token(request.request_id, now, endpoint.address)
        timed = self._timed.pop(request.request_id, None)
        if timed is not None and now > timed[0]:
            self._learn_spt((now - timed[0]) / timed[1])

    def _learn_spt(self, sample: float) -> None:
        if not self.spt:
            first = self._spt_first
            first.append(sample)
            if len(first) >= SPT_WARMUP:
                self.spt = sorted(first)[len(first) // 2]
                first.clear()
            return
        sample = min(max(sample, self.spt / SPT_CLAMP), self.spt * SPT_CLAMP)
        self.spt += 0.1 * (sample - self.spt)

    def on_finished(
        self, request: InferenceRequest, endpoint: Endpoint, output_tokens: int, ok: bool, now: float
    ) -> None:
        if self._waiting or self._tails:  # (nothing waits: ``_forget`` has nothing to do, not called)
            self._forget(request.request_id)
        self._timed.pop(request.request_id, None)
        if self.commit is not None:
            self.commit.finished(request.request_id, now, output_tokens, ok)
        if self.eviction is not None and output_tokens > 0:
            self.eviction.write(endpoint.address, float(output_tokens), now)

    def _to_emptier(
        self, cycle: CycleState, endpoints: Sequence[Endpoint], costs: list[float], lo: float
    ) -> float:
        """tieToEmptier: the candidates tied at the lowest cost ``lo`` are told apart by how full the prefix
        source believes their caches are (its fill share): each gets that share of ``TIE_TOKENS``, at most
        half the way to the next higher cost, so the order against every other candidate stays. In place;
        returns the new lowest cost."""
        precise = self.precise
        if precise is not None:
            index = precise.index
            now = cycle.now
            fills = [
                index.fill(ep.address, now) if c == lo else 0.0
                for ep, c in zip(endpoints, costs, strict=True)
            ]
        else:
            pindex = self.prefix.index
            fills = [
                pindex.fill(ep.address) if c == lo else 0.0 for ep, c in zip(endpoints, costs, strict=True)
            ]
        tied = [f for f, c in zip(fills, costs, strict=True) if c == lo]
        least = min(tied)
        if least == max(tied):
            return lo  # equally full (both empty, say): the picker's draw decides, as before
        step = TIE_TOKENS
        for c in costs:
            if c > lo and (c - lo) / 2 < step:
                step = (c - lo) / 2
        if cycle.explain:  # (the tied candidates only: an untied one's fill was not read; rev-c34 F2)
            shown = {ep.address: f for ep, f, c in zip(endpoints, fills, costs, strict=True) if c == lo}
            add_explanation(cycle, "tieFill", shown)
        for i, c in enumerate(costs):
            if c == lo:
                costs[i] = lo + (fills[i] - least) * step
        return lo

    def score(self, cycle: CycleState, endpoints: Sequence[Endpoint]) -> list[float]:
        costs = self.costs(cycle, endpoints)
        req = cycle.request
        p = req.prompt_tokens  # (``prompt_tokens`` inlined for a request with its estimate)
        if p <= 0:
            p = prompt_tokens(p, req.prompt_text, req.token_ids)
        s = float(p if p > 64 else 64)
        lo = min(costs)
        if self.tie_to_emptier and costs.count(lo) > 1:  # (C speed; a tie is rare under load)
            lo = self._to_emptier(cycle, endpoints, costs, lo)
        top = lo + s
        out: list[float] = []  # (a loop: a comprehension is a function call in 3.11)
        for c in costs:
            out.append(top / (c + s))
        return out


# Registered below the classes, not by decorator: mypyc (scripts/build_compiled.py) cannot compile those.
register("kvgate-cost-scorer")(KVGateCostScorer)
