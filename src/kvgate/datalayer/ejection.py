"""Passive health: eject an endpoint after consecutive failures, probe it back in with back-off.

One rule for both doors (review s30-qa30 Q2: it was ``kvgate.gateway.health``, and ``kvgate epp`` kept
none): ``kvgate serve`` charges what its proxy sees (connect errors, 5xx, streams cut before the first
byte), ``kvgate epp`` the ``:status`` of the response headers Envoy passes it (``extproc.outlier``).
The picker skips endpoints whose ``healthy`` is False. An ejected endpoint is probed at ``GET <probe_path>``
once its back-off expires; each failed probe doubles the back-off up to ``eject_max_s``. An ejected
endpoint down by its scrapes (``kvgate.datalayer.health.scrape_down``) that answers them again has
come back: it is probed at once, not at the end of a back-off that the outage may have doubled to
``eject_max_s`` (review s30-qa30 Q1).

The per-address state is bounded by the pools' endpoints (``endpoints``): addresses that left discovery
(Kubernetes pod churn: a new IP per pod) are dropped when the table has doubled since the last sweep, so
it holds at most about twice the live endpoints (and ``PRUNE_MIN``) however many have come and gone.
An address that left its pools and came back (a new ``Endpoint``: the stores make one per membership)
starts a fresh record, as Envoy's outlier detection starts one for a host added again: the failures,
back-off and timed-out time its earlier membership ran up are not its (fo31; closing-s30: two failures
before it left made one after it came back an ejection). Only then: ``kvgate serve``'s pools share one
tracker and one server may be in two of them (two live ``Endpoint`` objects, one per pool's store), whose
failures are one record (``_same_record``; review s31-rev-a31 F2: each pool's reset the other's, and a
server failing every request was never ejected).

Due probes run at once, at most ``PROBES_AT_ONCE`` in flight: ``k`` ejected servers that never answer
take about ``ceil(k / PROBES_AT_ONCE)`` probe timeouts a round, not ``k`` (fo31; closing-s30).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.health import HealthPolicy, scrape_down, up

log = logging.getLogger("kvgate.datalayer.ejection")


class EjectionConfig(Protocol):
    """The ``health`` section's knobs (``kvgate.config.gateway.HealthConfig``, both doors')."""

    eject_after_failures: int
    eject_base_s: float
    eject_max_s: float
    max_ejection_percent: float
    probe_path: str
    probe_timeout_s: float
    scrape_failures: int
    metrics_staleness_s: float


# The state table is swept of departed addresses once it holds this many (then twice what a sweep kept).
PRUNE_MIN = 64
# Probes in flight at once (``HealthTracker.run``).
PROBES_AT_ONCE = 16


@dataclass(slots=True)
class _State:
    ep: Endpoint  # the membership this record is of, the last object charged (``_same_record``)
    failures: int = 0
    backoff_s: float = 0.0
    retry_at: float = 0.0
    # ``timed_out``: the time (a union of spans, not a sum) since its last answer in which the endpoint
    # held requests that its deadline then cut without charging it, not charged yet; and that union's end.
    quiet_s: float = 0.0
    quiet_end: float = 0.0
    # Ejected, and seen down by its scrapes since: a scrape answered then brings its probe forward.
    scrape_down: bool = False


class HealthTracker:
    def __init__(
        self,
        cfg: EjectionConfig,
        clock: Callable[[], float],
        endpoints: Callable[[], Iterable[Endpoint]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.policy = HealthPolicy(cfg.scrape_failures, cfg.metrics_staleness_s)
        self._state: dict[str, _State] = {}
        # The endpoints now in the pools (every pool: an address may be in two): the state of any other
        # address is dropped at a sweep (``_entry``). None: never swept (a tracker without pools).
        self._endpoints = endpoints
        self._sweep_at = PRUNE_MIN
        self.ejections = 0
        # Pool name -> TLS context for https pools (probes go to https:// there).
        self.tls: dict[str, ssl.SSLContext] = {}
        # ... and for any other pool (``kvgate epp``'s one pool of https endpoints, whatever its name).
        self.default_tls: ssl.SSLContext | None = None
        # Set at an ejection: wakes the probe loop, which sleeps while nothing is ejected.
        self._ejected = asyncio.Event()

    def success(self, ep: Endpoint) -> None:
        ep.served_at = self.clock()
        st = self._state.get(ep.address)
        if st is not None and not self._same_record(st, ep):
            self._state[ep.address] = _State(ep)  # (came back: a fresh record)
        elif st is not None and (st.failures or st.quiet_end):
            st.failures = 0
            st.quiet_s = st.quiet_end = 0.0

    def timed_out(
        self, ep: Endpoint, since: float, until: float, unit: float, pool: Iterable[Endpoint] = ()
    ) -> bool:
        """The request's deadline cut ``ep``'s answer at ``until`` when ``ep`` had held the request only
        since ``since``: less than ``unit`` (half the bound), the rest spent in the gateway's queue or
        on other endpoints, so this timeout alone is not charged (review s17-fixes-b L6). But ``ep`` is
        charged for the time it had such requests: a failure for each ``unit`` of time, since its last
        answer, in which it held requests that timed out this way (the union of their spans, not their
        sum: requests it holds at once count once). A wedged engine under the overload it causes (every
        request reaches it after a long queue wait) is still ejected (review s18-gw L4); an endpoint
        that answers anything meanwhile is not charged (``success`` starts the count over). True when
        this charge ejected it."""
        st = self._entry(ep)
        start = max(since, st.quiet_end)
        if until > start:
            st.quiet_s += until - start
            st.quiet_end = until
        if st.quiet_s < unit:
            return False
        # One unit charged, the rest kept (review s18-fixes-c L1: resetting to 0 threw up to a unit away,
        # a failure per 1-2 units); one charge a call suffices: an uncharged span is under a unit.
        st.quiet_s -= unit
        return self.failure(ep, pool)

    def failure(self, ep: Endpoint, pool: Iterable[Endpoint] = ()) -> bool:
        """Record a failure; True when this one ejected the endpoint.

        Never ejects the pool's last endpoint that can take traffic (Envoy's "panic" idea): ejected only
        while another can (``_takes_traffic``: up by ``datalayer.health.up``, not ejected and not down by
        its scrapes, or not ejected and a request to it succeeded lately), so neither the only live
        server beside dead ones (review s30-qa30 Q3: a dead server, never sent anything, counted as a
        healthy peer by its flag) nor any endpoint of a pool in a real outage, down by its scrapes and
        serving nothing (its back-off would only delay the recovery: the first endpoint scraped alive
        serves again at once). A pool whose ``/metrics`` is unreachable but that serves (a NetworkPolicy
        on the metrics port) still ejects a dead server (review s30-rev-d30 F1).
        With nothing left the gateway could only answer 503, while the endpoint may just be overloaded
        for a moment. Nor more than ``max_ejection_percent`` of the pool at once, one at least (Envoy's
        ``max_ejection_percent``): failures that many endpoints share are more likely the requests'
        (a "query of death") or the load's than so many bad servers.
        """
        st = self._entry(ep)
        st.failures += 1
        if ep.healthy and st.failures >= self.cfg.eject_after_failures:
            peers = [other for other in pool if other is not ep]
            now = self.clock()
            if not any(self._takes_traffic(other, now) for other in peers):
                return False
            ejected = sum(1 for other in peers if not other.healthy)
            if ejected >= max(1, int((len(peers) + 1) * self.cfg.max_ejection_percent / 100)):
                return False
            self._eject(ep, st, self.cfg.eject_base_s)
            return True
        return False

    def _takes_traffic(self, ep: Endpoint, now: float) -> bool:
        """A peer that can take traffic now: up, or not ejected and a request to it succeeded within
        ``metrics_staleness_s`` (its scrapes may fail while it serves: the scraper cut off)."""
        if up(ep, now, self.policy):
            return True
        t = ep.served_at
        return ep.healthy and t is not None and now - t <= self.policy.metrics_staleness_s

    def _entry(self, ep: Endpoint) -> _State:
        """``ep``'s state, made when new (or when its address's is an earlier membership's: a fresh
        record, the module's note). The table only grows here: when it has reached
        ``_sweep_at`` entries, the addresses no pool holds any more are dropped first (an endpoint that
        left discovery, whose last requests failed or timed out after it left: review s18-fixes-c I4),
        and the next sweep waits until the table has doubled (amortized O(1) per new address)."""
        address = ep.address
        st = self._state.get(address)
        if st is None:
            if len(self._state) >= self._sweep_at and self._endpoints is not None:
                live = {other.address for other in self._endpoints()}
                for gone in [a for a in self._state if a not in live]:
                    del self._state[gone]
                self._sweep_at = max(PRUNE_MIN, 2 * len(self._state))
            st = self._state[address] = _State(ep)
        elif not self._same_record(st, ep):
            st = self._state[address] = _State(ep)
        return st

    def _same_record(self, st: _State, ep: Endpoint) -> bool:
        """Whether ``st``, its address's record, is ``ep``'s: made for ``ep``, or for another ``Endpoint``
        of the address still in a pool (the same server in two of ``kvgate serve``'s pools: one record,
        rebound to ``ep``). Not when that other one has left every pool (``ep`` came back: a fresh
        record, the module's note). A tracker without pools to look at (``endpoints`` None) takes
        another pool's object for the same server and a new one in the same pool for a return."""
        old = st.ep
        if old is ep:
            return True
        if self._endpoints is None:
            same = old.pool != ep.pool
        else:
            same = any(other is old for other in self._endpoints())
        if same:
            st.ep = ep
        return same

    def _eject(self, ep: Endpoint, st: _State, backoff: float) -> None:
        ep.healthy = False
        st.scrape_down = ep.down_since_ejected = False
        st.backoff_s = min(backoff, self.cfg.eject_max_s)
        st.retry_at = self.clock() + st.backoff_s
        self.ejections += 1
        self._ejected.set()
        log.warning("ejected %s for %.1fs after %d failures", ep.address, st.backoff_s, st.failures)

    def due(self, endpoints: Iterable[Endpoint]) -> list[Endpoint]:
        """The ejected endpoints to probe now: their back-off over, or back from an outage (down by its
        scrapes, ``datalayer.health.scrape_down``, then answering them again; seen at each call, 4 a
        second in ``run``)."""
        now, policy = self.clock(), self.policy
        due = []
        for ep in endpoints:
            if ep.healthy:
                continue
            st = self._state.get(ep.address)
            if st is None or not self._same_record(st, ep):  # (never charged in this membership: now)
                due.append(ep)
            elif scrape_down(ep, now, policy):
                st.scrape_down = ep.down_since_ejected = True
                if now >= st.retry_at:
                    due.append(ep)
            elif st.scrape_down:
                st.scrape_down = False
                log.warning("%s answers its scrapes again: probed now", ep.address)
                due.append(ep)
            elif now >= st.retry_at:
                due.append(ep)
        return due

    def probe_result(self, ep: Endpoint, ok: bool) -> None:
        st = self._entry(ep)
        if ok:
            ep.healthy = True
            ep.down_since_ejected = False
            st.failures = 0
            st.quiet_s = st.quiet_end = 0.0  # (back in: ``timed_out`` counts afresh)
            st.backoff_s = 0.0
            log.warning("probe ok: %s is back in", ep.address)
        else:
            st.backoff_s = min(st.backoff_s * 2 or self.cfg.eject_base_s, self.cfg.eject_max_s)
            st.retry_at = self.clock() + st.backoff_s

    async def probe(self, session: aiohttp.ClientSession, ep: Endpoint) -> bool:
        tls = self.tls.get(ep.pool) or self.default_tls
        url = f"{'https' if tls is not None else 'http'}://{ep.address}{self.cfg.probe_path}"
        try:
            timeout = aiohttp.ClientTimeout(total=self.cfg.probe_timeout_s)
            async with session.get(url, timeout=timeout, ssl=tls or True) as resp:
                await resp.read()
                return resp.status < 500
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def run(
        self,
        session: aiohttp.ClientSession,
        endpoints: Callable[[], Iterable[Endpoint]],
        interval_s: float = 0.25,
    ) -> None:
        """Probe loop; cancelled on shutdown. Every ``interval_s`` while an endpoint is ejected; with none
        ejected it waits for the next ejection (``_eject`` is the only place an endpoint goes unhealthy)
        instead of waking the event loop to find nothing to probe (issue #16: on a machine whose cores
        are busy, each wake-up costs ~0.1 ms of CPU; 4 a second were a quarter of an idle gateway's)."""
        while True:
            eps = list(endpoints())
            if all(ep.healthy for ep in eps):
                self._ejected.clear()  # no await since the check: an ejection cannot fall between
                await self._ejected.wait()
                continue
            due = self.due(eps)
            if due:
                await self._probe_all(session, due)
            await asyncio.sleep(interval_s)

    async def _probe_all(self, session: aiohttp.ClientSession, due: list[Endpoint]) -> None:
        """``due`` probed at once, at most ``PROBES_AT_ONCE`` in flight (the module's note); the round
        ends when every probe has (each bounded by ``probe_timeout_s``)."""
        gate = asyncio.Semaphore(PROBES_AT_ONCE)

        async def one(ep: Endpoint) -> None:
            async with gate:
                ok = await self.probe(session, ep)
            self.probe_result(ep, ok)

        await asyncio.gather(*(one(ep) for ep in due))
