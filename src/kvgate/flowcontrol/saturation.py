"""Saturation detectors: is the pool too busy to accept a sheddable (negative-priority) request?

Both give a per-endpoint score where 1.0 = saturated, and a pool score = their mean over the
candidates; the director sheds a sheddable request when the pool score is >= 1.0 (reference rule).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kvgate.datalayer.endpoint import METRICS_STALENESS_S as REFERENCE_STALENESS_S
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.datalayer.mappings import cache_size_series
from kvgate.scheduling.framework import ConfigError, CycleState, Filter, Params, Plugin, PluginHandle
from kvgate.scheduling.registry import register

log = logging.getLogger(__name__)

# The most endpoints the utilization detector remembers having warned of (a missing cache size).
MAX_WARNED = 4096


class SaturationDetector(Plugin):
    # A bound on the requests not yet started (``fairShareHeadroomOn: pending`` takes the headroom off it).
    pending_bound = False
    # It reads the scraped metrics (a stale page counts saturated): what a slow scrape ``interval`` harms.
    reads_scraped_metrics = False

    def endpoint_saturation(self, ep: Endpoint, now: float, pending_scale: float = 1.0) -> float:
        """``pending_scale`` < 1 tightens the detector's pending bound, if it has one (others ignore it)."""
        raise NotImplementedError

    def saturation(self, endpoints: Sequence[Endpoint], now: float, pending_scale: float = 1.0) -> float:
        if not endpoints:
            return float("inf")
        return sum(self.endpoint_saturation(ep, now, pending_scale) for ep in endpoints) / len(endpoints)

    def saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        return self.saturation(endpoints, now) >= 1.0

    def scrape_bound(self) -> float:
        """How long this detector can go without a scrape of an endpoint whose last scraped load this
        gateway's own in-flight requests explained, before it loses its signal there (the scraper's
        quiet cadence stays under half of it). A detector that reads no scraped metrics has no bound of
        its own; the pool's scorers still read the page verbatim, so it keeps the reference's 0.2 s
        staleness (a 0.1 s quiet cadence, as before the carry-forward)."""
        return REFERENCE_STALENESS_S

    def saturated_reserving(
        self, endpoints: Sequence[Endpoint], now: float, headroom: float, pending_only: bool = False
    ) -> bool:
        """The gate for a flow over its fair share (``flowControl.fairShareHeadroom``): saturated
        already at ``1 - headroom``, so the rest stays free for the flows under their share.

        With ``pending_only`` (``fairShareHeadroomOn: pending``) the headroom comes off the detector's
        pending bound (``pending_scale``): the flows under their fair share get the last ``headroom``
        of the slots where a server starts a request at its next step, and as many running slots are
        kept free for them (a pending slot is no use without a running one: with small batches that is
        what binds); the token bound stays whole, and with big batches those few running slots cost
        next to nothing. Otherwise, or for a detector without a pending bound (the config refuses that
        combination), it comes off the whole score (every bound, as a share of each)."""
        if pending_only and self.pending_bound:
            return self.saturation(endpoints, now, 1.0 - headroom) >= 1.0
        return self.saturation(endpoints, now) >= 1.0 - headroom


# The reference rule unless configured: a config that does not set ``ownLoadStalenessThreshold`` keeps
# the reference meaning of ``metricsStalenessThreshold`` (and the scraper's 0.1 s quiet cadence). The
# ``kvgate`` policy sets it to 1 s (config/policies.py).
DEFAULT_OWN_LOAD_STALENESS_S = 0.0


@register("utilization-detector")
class UtilizationDetector(SaturationDetector):
    """max(queue / queueDepthThreshold, kv / kvCacheUtilThreshold); metrics older than
    ``metricsStalenessThreshold`` (200 ms) count as saturated: no news is not good news.

    kvgate, ``ownLoadStalenessThreshold`` (default 0 = the reference rule alone; the ``kvgate`` policy
    sets 1 s): what this gateway sent
    and has not seen finish is news too, and always fresh. A page that showed no load from elsewhere
    (waiting + running <= this gateway's own requests there when the page was asked for,
    ``EndpointMetrics.own_explained``), with no scrape failed since, is carried forward by its own
    accounting at every age up to max(staleness, this threshold): the endpoint's state since is taken
    to be what this gateway did to it (load from elsewhere shows at the next scrape), and only what the
    server alone knows comes from the page:

    - queue: the page's waiting requests, plus the change since in this gateway's requests there
      without a first token (each one sent since counts as waiting until its first token; each one
      that has started since leaves, except that the first starts since, up to as many as the page
      showed of them in prefill, are taken as those: running on the page, never in its waiting count),
      at least 0;
    - KV: the page's usage, plus the tokens (prompt, less a prefix one of its requests in flight there
      already holds, and the output it can decode within ``scrape_bound`` at the endpoint's learned
      pace: ``InFlight.sent_tokens``) of the requests sent there since the page was asked for and of
      its requests without a first token then that the page did not show running (waiting, or not at
      the server yet: no KV on the page; those it showed running beyond its decoding ones are in
      prefill, their KV on the page), over the server's cache
      (``block_size x num_gpu_blocks`` from the page; a page without it: none added, the KV term is
      the page's reading, and a warning names the endpoint once; then, with any of this gateway's
      requests in flight there, a page older than the staleness threshold is saturated, upstream's
      rule, rev-c36 F2). A running total that
      went back (it must not) is unknown: the reference rule.

    While nothing of its own changes the score is the page's (ageing alone never lowers it); a page
    younger than the staleness threshold is read the same way, so a burst counts at once. Not counted:
    the KV that requests already running at the page take as they decode after it. Load from elsewhere
    that arrives after the page shows at the next scrape (the scraper's quiet cadence,
    ``datalayer.scraper.QUIET_S``, at most half of the bound: ``scrape_bound``, plus the GET).
    """

    reads_scraped_metrics = True

    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        queue_threshold: float = 5.0,
        kv_threshold: float = 0.8,
        staleness: float = 0.2,
        own_load_staleness: float = DEFAULT_OWN_LOAD_STALENESS_S,
    ) -> None:
        super().__init__(name, handle)
        self.queue_threshold = queue_threshold
        self.kv_threshold = kv_threshold
        self.staleness = staleness
        self.own_load_staleness = own_load_staleness
        # Endpoints already warned of a page without a cache size (once each).
        self._no_capacity_warned: set[str] = set()

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> UtilizationDetector:
        d = cls(
            name,
            handle,
            queue_threshold=params.get_float("queueDepthThreshold", 5.0, min=1e-9),
            kv_threshold=params.get_float("kvCacheUtilThreshold", 0.8, min=1e-9, max=1.0),
            # (> 0, as the reference plugin's: 0 s would count every endpoint stale; qa36a F2)
            staleness=params.get_duration("metricsStalenessThreshold", REFERENCE_STALENESS_S, positive=True),
            own_load_staleness=params.get_duration("ownLoadStalenessThreshold", DEFAULT_OWN_LOAD_STALENESS_S),
        )
        params.finish()
        return d

    def scrape_bound(self) -> float:
        return max(self.staleness, self.own_load_staleness)

    def endpoint_saturation(self, ep: Endpoint, now: float, pending_scale: float = 1.0) -> float:
        m = ep.metrics
        if m.updated_at is None:
            return 1.0
        age = now - m.updated_at
        carried = None
        if (
            self.own_load_staleness > 0
            and age <= self.scrape_bound()
            and m.own_pending is not None
            and m.own_explained
            and not ep.scrape_failures
        ):
            carried = self._carried(ep, m, age)
        if carried is not None:
            # At every age, the page moved by what this gateway did since (never less than the page
            # alone while nothing of its own changed: ageing alone never lowers the score).
            return carried
        if age <= self.staleness:
            return max(m.waiting_queue_size / self.queue_threshold, m.kv_cache_usage / self.kv_threshold)
        return 1.0

    def _carried(self, ep: Endpoint, m: EndpointMetrics, age: float) -> float | None:
        """The page carried forward by this gateway's own accounting; None: not known (the reference
        rule applies)."""
        inf = ep.inflight
        pending = max(0, inf.requests - inf.decoding)
        # Not clamped to its own pending requests: waiting requests it cannot account for (preempted
        # ones, someone else's behind its finished-but-relaying ones) stay until a page says otherwise.
        # The first starts since the page are taken as those the page showed in prefill (running, never
        # in its waiting count): they do not take the page's waiting requests off (review s8-final-c C1;
        # where a finished prefill did let a waiting one in, the queue is overstated until the next page).
        prefill_started = min(m.own_prefill, max(0, inf.started - inf.started_base - m.own_started))
        queue = max(0, m.waiting_queue_size + pending - (m.own_pending or 0) + prefill_started)
        kv = m.kv_cache_usage
        # Tokens sent since the page, and those of its requests without a first token that the page
        # did not show running (not in its KV: a waiting request holds no blocks; one in prefill does).
        sent = inf.sent_tokens - inf.sent_base - m.own_sent_tokens
        if sent < 0:
            return None  # the running total went back (it must not): unknown, not "nothing sent"
        if sent > 0:
            capacity = (m.block_size or 0) * (m.num_gpu_blocks or 0)
            if capacity:
                kv += sent / capacity
            else:
                # No cache size on the page: these tokens have no share to add. With none of this
                # gateway's requests in flight there (all sent since have finished: the idle or
                # sequential client of qa36b-F1) the KV term is the page's own reading; with some, a
                # page past metricsStalenessThreshold is read as upstream reads it: saturated (rev-c36
                # F2; younger, the page's reading, the queue term counting those without a first token).
                self._warn_no_capacity(ep)
                if inf.requests and age > self.staleness:
                    return None
        return max(queue / self.queue_threshold, kv / self.kv_threshold)

    def _warn_no_capacity(self, ep: Endpoint) -> None:
        if ep.address in self._no_capacity_warned:
            return
        if len(self._no_capacity_warned) >= MAX_WARNED:
            self._no_capacity_warned.clear()  # (endpoints churned by the thousand: bounded, may warn again)
        self._no_capacity_warned.add(ep.address)
        log.warning(
            "%s: its /metrics gives no KV cache size (%s): the utilization detector reads its KV usage "
            "from the page alone, without the tokens this gateway sent there since (they count in the "
            "queue term until their first token)",
            ep.address,
            cache_size_series(ep.engine),
        )


# A bound a ``concurrencyMode`` leaves out: never reached (an int, as the bounds' arithmetic expects).
UNBOUNDED = 1 << 62

# GIE's two modes, and kvgate's ``both`` (the larger of the two: its rule before the modes existed).
MODES = ("requests", "tokens", "both")


@register("concurrency-detector")
class ConcurrencyDetector(SaturationDetector, Filter):
    """This picker's own in-flight load: max(requests / maxConcurrency, tokens / maxTokenConcurrency,
    pending / maxPendingRequests), lag-free (no scrape).

    Upstream GIE's parameters, with their meaning: ``concurrencyMode`` ``requests`` (GIE's default, also
    when unset) counts requests only, ``tokens`` tokens only (``maxTokenConcurrency``). kvgate's ``both``
    counts the larger of the two, its rule before the modes existed; ``maxTokens`` (kvgate's older name
    of ``maxTokenConcurrency``) with no mode asks for it too, as it always did. In-flight tokens are
    the prompt and expected output of the requests in flight (``InFlight``), where GIE estimates them as
    characters / 4 x 2.5. ``headroom`` (0, in [0, 1]): in a scheduling profile the detector is also a
    filter, as GIE's: an endpoint at ``bound x (1 + headroom)`` in flight leaves the candidates, so a
    pick can burst a little above the bound the gate keeps on the pool's mean, never further.

    ``maxPendingRequests`` (kvgate; 0 = off) bounds the requests sent to an endpoint that have not
    produced their first token yet: those wait in the server's own FCFS queue, where no fairness or
    priority applies. With flow control, keeping that number small holds the backlog in the EPP,
    which dispatches by band and fair share each time a server takes a request in. It needs a request
    bound (its ``maxConcurrency`` is then the servers' running-batch limit): refused in ``tokens`` mode.

    Counted in sequences (``InFlight.requests``: a request with ``n`` choices x a batch's prompts is
    that many, as vLLM's ``max_num_seqs`` counts; upstream GIE's detector counts requests, it knows no
    ``n``). The gate asks one free slot of any request; flow control's late pick sends a request of
    several sequences to an endpoint with room for all of them when one has (``fits``; as many as a
    bound holds), else where the most running slots are free.
    """

    def __init__(
        self,
        name: str,
        handle: PluginHandle,
        max_requests: int = 100,
        max_tokens: int = 1_000_000,
        max_pending: int = 0,
        headroom: float = 0.0,
    ) -> None:
        super().__init__(name, handle)
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.max_pending = max_pending
        self.pending_bound = max_pending > 0
        self.headroom = headroom
        # The filter's limits (GIE: int64(bound x (1 + headroom)); an endpoint stays while below).
        self.request_limit = int(max_requests * (1.0 + headroom))
        self.token_limit = int(max_tokens * (1.0 + headroom))

    @classmethod
    def create(cls, name: str, params: Params, handle: PluginHandle) -> ConcurrencyDetector:
        mode = params.get_str("concurrencyMode", "", choices=MODES)
        if params.raw.get("maxTokens") is not None and params.raw.get("maxTokenConcurrency") is not None:
            raise ConfigError(
                f"{params.path}.maxTokens: the same bound as maxTokenConcurrency (GIE's name); set one"
            )
        if not mode:
            # GIE's default counts requests alone (its maxTokenConcurrency then unused); kvgate's older
            # key keeps the meaning it had, a token bound beside the request bound (s23-rev-fixqa23 R3).
            mode = "both" if params.raw.get("maxTokens") is not None else "requests"
        max_tokens = params.get_int("maxTokenConcurrency", 1_000_000, min=1)
        max_tokens = params.get_int("maxTokens", max_tokens, min=1)
        max_requests = params.get_int("maxConcurrency", 100, min=1)
        max_pending = params.get_int("maxPendingRequests", 0, min=0)
        if mode == "tokens" and max_pending:
            raise ConfigError(
                f"{params.path}.maxPendingRequests: needs a request bound; concurrencyMode 'tokens' has none"
            )
        d = cls(
            name,
            handle,
            max_requests=UNBOUNDED if mode == "tokens" else max_requests,
            max_tokens=UNBOUNDED if mode == "requests" else max_tokens,
            max_pending=max_pending,
            headroom=params.get_float("headroom", 0.0, min=0.0, max=1.0),
        )
        params.finish()
        return d

    full_when_empty = True  # (every endpoint at its bound: GIE's 429, ``PoolBusyError``)

    def filter(self, cycle: CycleState, endpoints: list[Endpoint]) -> list[Endpoint]:
        """GIE's filter: the endpoints below ``bound x (1 + headroom)`` in flight (every bound counted)."""
        rl, tl = self.request_limit, self.token_limit
        kept = []
        for ep in endpoints:
            inf = ep.inflight
            if inf.requests < rl and inf.pending_prefill_tokens + inf.pending_decode_tokens < tl:
                kept.append(ep)
        return kept

    def fits(self, endpoints: Sequence[Endpoint], seqs: int, freed: tuple[str, int] | None = None) -> bool:
        """Has one of ``endpoints`` a running (and pending) slot for each of ``seqs`` sequences (as many as
        a bound holds)? ``freed``: (address, sequences): as if a request of that many sequences waiting
        for its first token (a preemption's victim) left that endpoint."""
        run = min(seqs, self.max_requests)
        pend = min(seqs, self.max_pending)
        for ep in endpoints:
            inf = ep.inflight
            gone = freed[1] if freed is not None and ep.address == freed[0] else 0
            if inf.requests - gone + run <= self.max_requests and (
                not pend or inf.requests - inf.decoding - gone + pend <= self.max_pending
            ):
                return True
        return False

    def endpoint_saturation(self, ep: Endpoint, now: float, pending_scale: float = 1.0) -> float:
        inf = ep.inflight
        tokens = inf.pending_prefill_tokens + inf.pending_decode_tokens
        if not self.max_pending:
            return max(inf.requests / self.max_requests, tokens / self.max_tokens)
        # A reservation on the pending bound (pending_scale < 1) keeps that many request slots free in
        # the running bound too: a request that finds a pending slot but no running slot waits in the
        # server's queue all the same (what binds with small batches). A pending bound above the
        # running bound never binds (a pending request is a running one): the running bound is then
        # the one reserved against, or the reservation would take every running slot.
        reserved = (1.0 - pending_scale) * min(self.max_pending, self.max_requests)
        running = inf.requests / max(1e-9, self.max_requests - reserved)
        pending = (inf.requests - inf.decoding) / (self.max_pending * pending_scale)
        return max(running, tokens / self.max_tokens, pending)
