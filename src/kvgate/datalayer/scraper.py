"""Scrape every endpoint's ``/metrics`` on one shared aiohttp session and keep ``Endpoint.metrics`` fresh.

One task per endpoint (started and stopped from store change events), each on its own cadence, so a
slow server delays only its own signals; a failed scrape leaves the old metrics in place and they go
stale by their ``updated_at``, which the picker and the saturation detector check. Scrape timestamps
come from the injected clock; only the pacing sleeps use real time.

Each scrape asks only for the series the picker reads where the engine's server can filter its page
(``mappings.filter_query``: prometheus_client's ``?name[]=``), at ``<path>/`` because vLLM answers a
bare ``GET /metrics`` from prometheus-fastapi-instrumentator's handler, which ignores the query, while
``/metrics/...`` reaches prometheus_client's own app mounted there. An endpoint that answers that request
with 400/404/405 (no such handler, or one that refuses the query), or with a page lacking every wanted
series, is scraped whole for ``UNFILTERED_RETRY_S`` and then asked filtered again (the same scrape falls
back at once, so no round is lost). Any other 4xx (429, 408 from a loaded API server) or 5xx is a failed
scrape, not a server that cannot filter: it fails like any other, and the next one asks filtered again.

Cadence: every ``interval`` (the reference's 50 ms) while an endpoint's scraped load is more than this
gateway has in flight to it (someone else's traffic, which only a scrape shows); every
``quiet_interval`` (``QUIET_S``, 0.5 s, and never more than half of what the pool's saturation
detector can bridge: ``quiet_interval_for``; 0.1 s under the reference rule) while the last scrape
showed nothing the gateway's own in-flight accounting does not already explain (waiting + running <= its
own requests there), e.g. an endpoint only this gateway uses, or an idle one. Every scrape costs the
server's API process CPU (docs/benchmarks/realvllm.md sections 4.2 and 4.5); load from elsewhere that
arrives after a page is seen at the next one: within ``quiet_interval`` plus the GET. Between such
scrapes the utilization detector (with ``ownLoadStalenessThreshold`` set, as the kvgate policy does)
carries the page forward by the gateway's own accounting (``EndpointMetrics.own_*``, read here before
each GET), so a quiet endpoint's metrics do not go stale to it.

The GET itself goes over ``pageclient.PageClient`` (one kept-alive connection per endpoint, prebuilt
request bytes): ~0.5x aiohttp's CPU per scrape of vLLM's filtered page, ~0.4x with the label-set
cache of ``promparse`` against the code before both (134 / 263 / 327 us, docs/benchmarks/realvllm.md
section 4.4), measured by ``kvgate bench scrape-cpu``, which runs the aiohttp path
(``http="aiohttp"``) as its baseline. An endpoint that answers with a
redirect is scraped with aiohttp (it follows redirects) for ``UNFILTERED_RETRY_S``, then the lean
client tries again; every endpoint is scraped with aiohttp when the
caller hands in its own aiohttp ``session``.

Where to scrape: ``<scheme>://<endpoint><path>``, the scraper's own settings (its ``scheme``: https for a
pool's ``https://`` endpoints) unless the picker config's ``metrics-data-source`` sets them: ``source``
(``ScrapeSource``, or a function returning the pool's current one, asked once per scrape so a reloaded
config's path takes effect at the next) carries the reference's ``scheme``, ``path``, ``port``,
``interval`` and TLS keys (``insecureSkipVerify``, ``caCertPath``, ``clientCertPath``/``clientKeyPath``),
met with the scraper's own as ``scrape_source.resolve`` says (a source's ``http`` never turns an https
pool's scrape into plain http, nor ``https`` alone drop its verification).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import aiohttp

from kvgate.aio import cancel_all_and_wait, stop_to_the_end
from kvgate.datalayer.endpoint import METRICS_STALENESS_S, Endpoint, EndpointMetrics
from kvgate.datalayer.mappings import extract, filter_query, mapping_for, page_has_signals
from kvgate.datalayer.pageclient import PageClient, PageError
from kvgate.datalayer.scrape_source import ScrapeSource, resolve
from kvgate.datalayer.store import EndpointStore, StoreChange

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.05  # reference: every 50 ms per endpoint
# Whole-scrape time cap (the reference uses 10 s); kept under the 5 s metrics staleness of
# datalayer.health so a server too slow to scrape is counted as failing, not waited on.
DEFAULT_TIMEOUT_S = 2.0
# A /metrics body larger than this is refused unread: parsing 100 MB on the event loop would stall
# every request. vLLM's page is tens of KB.
MAX_SCRAPE_BYTES = 4 << 20
# Answers the aiohttp path follows (304, 300 are no redirects to follow: a failed scrape).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
PICKER_STALENESS_S = 2.0  # reference: older metrics are stale for the picker
SATURATION_STALENESS_S = METRICS_STALENESS_S
# The pause for an endpoint whose scraped load the gateway's own in-flight requests explain (measured:
# docs/benchmarks/realvllm.md section 4.5). At most half of what the pool's saturation detector can
# bridge (``SaturationDetector.scrape_bound``), so its metrics never look stale to it while scrapes work.
QUIET_S = 0.5
# The answers that say "this server has no filtering handler at <path>/" (rather than "busy now").
NO_FILTER_STATUSES = frozenset({400, 404, 405})
# How long an endpoint that did not honour the filter is scraped whole before the filter is tried again
# (one wrong answer, or a server restarted into another version, is not forever): one filtered request
# per endpoint every 5 minutes is nothing next to 20 scrapes a second.
UNFILTERED_RETRY_S = 300.0


def quiet_interval_for(interval: float, bound: float | None = None) -> float:
    """The quiet cadence: ``QUIET_S``, at most half of ``bound`` (how long the pool's saturation
    detector keeps an explained endpoint's metrics usable), never faster than ``interval``. ``bound``
    None (not told; a scraper without a gateway pool's detector): as before the detector could bridge,
    2x the interval, at most half the reference's 0.2 s staleness."""
    if bound is None:
        return max(interval, min(2 * interval, SATURATION_STALENESS_S / 2))
    return max(interval, min(QUIET_S, bound / 2))


class _Ask:
    """``target``/``next_interval``'s "look the source up now" (None is "no source")."""


_ASK = _Ask()


class _PoolPorts:
    """The pool's endpoints' own ports, as ``scrape_source.resolve`` asks for them: a walk over the pool
    per question, asked only by a source that names a port and says http for an https pool."""

    __slots__ = ("store",)

    def __init__(self, store: EndpointStore) -> None:
        self.store = store

    def __contains__(self, port: object) -> bool:
        suffix = f":{port}"
        return any(e.address.endswith(suffix) for e in self.store.all())


@dataclass(frozen=True, slots=True)
class _Target:
    """One scrape's resolved destination."""

    address: str  # host:port the GET goes to
    scheme: str
    tls: ssl.SSLContext | None
    path: str


class ScrapeStatusError(Exception):
    """A non-200 answer (other than the no-filter ones while asking filtered)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"/metrics answered {status}")
        self.status = status


class _NeedsAiohttp(Exception):
    """The lean client's answer needs what only aiohttp does (a redirect to follow, a body to decode)."""


@dataclass(slots=True)
class ScrapeStats:
    ok: int = 0
    failed: int = 0
    last_error: str | None = None


class MetricsScraper:
    def __init__(
        self,
        store: EndpointStore,
        *,
        interval: float = DEFAULT_INTERVAL_S,
        timeout: float = DEFAULT_TIMEOUT_S,
        path: str = "/metrics",
        clock: Callable[[], float] = time.monotonic,
        session: aiohttp.ClientSession | None = None,
        max_bytes: int = MAX_SCRAPE_BYTES,
        scheme: str = "http",
        tls: ssl.SSLContext | None = None,
        quiet_interval: float | None = None,
        quiet_bound: float | Callable[[], float | None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        http: str = "lean",
        source: ScrapeSource | Callable[[], ScrapeSource | None] | None = None,
    ) -> None:
        if http not in ("lean", "aiohttp"):
            raise ValueError(f"http must be 'lean' or 'aiohttp', not {http!r}")
        # "aiohttp" for every endpoint when a session is handed in (the caller chose its client).
        self.http = "aiohttp" if session is not None else http
        self._clients: dict[str, PageClient] = {}
        # Endpoint -> the (address, scheme, tls, path) its lean client was built for (the path too: its
        # prebuilt requests are per path, dropped with the client when a reload changes it).
        self._client_keys: dict[str, tuple[str, str, int, str]] = {}
        self._source = source
        self._requests: dict[tuple[str, str], bytes] = {}  # (address, path) -> prebuilt GET
        # Endpoints the lean client could not read (a redirect) -> the clock time until which they are
        # scraped with aiohttp; then the lean client tries again (a restarted server may not redirect).
        self._aiohttp_only: dict[str, float] = {}
        self.store = store
        self._pool_ports = _PoolPorts(store)  # (what ``resolve`` asks of the pool)
        # Endpoints that did not honour the filtered request -> the clock time until which they are
        # scraped whole.
        self._unfiltered: dict[str, float] = {}
        # Endpoint -> (page text, engine, the metrics read from it): the same page again is not parsed
        # again (an idle server answers the same page scrape after scrape; issue #16).
        self._last_page: dict[str, tuple[str, str, EndpointMetrics]] = {}
        self._sleep = sleep
        self.scheme = scheme
        self.tls = tls
        self._system_tls: ssl.SSLContext | None = None  # https with no context given: the system's CAs
        # Sources whose ``scheme: http`` this scraper's https overrode, warned of once each (by origin).
        self._scheme_warned: set[str] = set()
        self.max_bytes = max_bytes
        self.interval = interval
        # ``quiet_bound``: the pool's ``Director.scrape_bound()`` (None: not told, ``quiet_interval_for``),
        # or a function returning it, asked at every pause: a pool whose picker is swapped (a config
        # reload) is paced by the new one's detector from its next scrape.
        self._quiet_fixed = quiet_interval
        self._quiet_bound = quiet_bound
        self.timeout_s = timeout
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.path = path
        self.clock = clock
        self._session = session
        self._own_session = session is None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.stats: dict[str, ScrapeStats] = {}
        self._running = False

    async def __aenter__(self) -> MetricsScraper:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            # One pooled session for all endpoints; per-host limit keeps one connection each busy.
            # No cookie jar, no decompression, bytes in: each saves CPU on every scrape of every endpoint.
            conn = aiohttp.TCPConnector(limit=0, limit_per_host=2, ttl_dns_cache=10)
            self._session = aiohttp.ClientSession(
                connector=conn,
                timeout=self.timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
            )
        return self._session

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        if self.http == "aiohttp":
            self._session_()
        self.store.add_listener(self._on_change)
        for ep in self.store.all():
            self._spawn(ep)

    async def stop(self) -> None:
        """Stop scraping and close the clients and the session; also when cancelled meanwhile, the
        cancellation raised after (``stop_to_the_end``)."""
        await stop_to_the_end(self._stop(), "metrics scraper: stopping", log)

    async def _stop(self) -> None:
        self._running = False
        self.store.remove_listener(self._on_change)
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_all_and_wait(tasks, "metrics scraper", log)
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._client_keys.clear()
        self._requests.clear()
        # (Stopped, it hears of no removals: a page kept over a stop could outlive its endpoint.)
        self._last_page.clear()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _on_change(self, change: StoreChange) -> None:
        addr = change.endpoint.address
        if change.kind == "removed":
            task = self._tasks.pop(addr, None)
            if task is not None:
                task.cancel()
            self.stats.pop(addr, None)
            self._unfiltered.pop(addr, None)
            self._aiohttp_only.pop(addr, None)
            self._last_page.pop(addr, None)
            self._forget_lean(addr)
        elif change.kind == "added" and self._running:
            self._spawn(change.endpoint)

    def _spawn(self, ep: Endpoint) -> None:
        if ep.address not in self._tasks:
            self._tasks[ep.address] = asyncio.get_running_loop().create_task(
                self._loop(ep), name=f"scrape {ep.address}"
            )

    async def _loop(self, ep: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        while self._running:
            started = loop.time()
            src = self.source()  # once per scrape (each lookup walks the pool's plugins)
            await self._scrape(ep, src)
            # Fixed cadence from the start of each scrape; never busy-loop on a slow server.
            pause = self.next_interval(ep, src) - (loop.time() - started)
            await self._sleep(max(pause, self._busy(src) * 0.1))

    def source(self) -> ScrapeSource | None:
        """The config's metrics-data-source settings now (None: none given)."""
        return self._source() if callable(self._source) else self._source

    def _busy(self, src: ScrapeSource | None) -> float:
        return src.interval if src is not None and src.interval is not None else self.interval

    def _quiet(self, src: ScrapeSource | None) -> float:
        if self._quiet_fixed is not None:
            return self._quiet_fixed
        bound = self._quiet_bound() if callable(self._quiet_bound) else self._quiet_bound
        return quiet_interval_for(self._busy(src), bound)

    @property
    def busy_interval(self) -> float:
        """``interval``, or the config data source's ``interval`` where it sets one."""
        return self._busy(self.source())

    @property
    def quiet_interval(self) -> float:
        return self._quiet(self.source())

    def next_interval(self, ep: Endpoint, src: ScrapeSource | _Ask | None = _ASK) -> float:
        """How long after this scrape's start the next one starts (module docstring, "Cadence");
        ``src``: the source already looked up for this scrape (else looked up now)."""
        if isinstance(src, _Ask):
            src = self.source()
        return self._quiet(src) if self.explained(ep) else self._busy(src)

    def target(self, ep: Endpoint, src: ScrapeSource | _Ask | None = _ASK) -> _Target:
        """Where ``ep``'s page is read now: the scraper's scheme, TLS and path unless the config's
        metrics-data-source sets them (``scrape_source.resolve``; its ``port`` replaces the endpoint's)."""
        if isinstance(src, _Ask):
            src = self.source()
        if src is None:
            return _Target(ep.address, self.scheme, self.tls, self.path)
        address = ep.address
        host, _, port = address.rpartition(":")
        if src.port is not None:
            address = f"{host or address}:{src.port}"
        own = int(port) if host and port.isdigit() else None
        r = resolve(src, self.scheme, self.tls, self.path, own, self._pool_ports)
        if r.scheme_overridden and src.origin not in self._scheme_warned:
            self._scheme_warned.add(src.origin)
            log.warning(
                "%s.scheme: 'http' not applied: this pool's endpoints are scraped over https "
                "(its endpoints are https://), verified against the pool's caFile; set scheme: https or "
                "leave it out (a source naming another port keeps its http)",
                src.origin or "metrics-data-source",
            )
        return _Target(address, r.scheme, r.tls, r.path)

    @staticmethod
    def explained(ep: Endpoint) -> bool:
        """Did the last scrape show only load this gateway knows it sent (or none)?"""
        m = ep.metrics
        return (
            m.updated_at is not None
            and ep.scrape_failures == 0
            and m.waiting_queue_size + m.running_requests <= ep.inflight.requests
        )

    async def scrape(self, ep: Endpoint) -> bool:
        """Scrape one endpoint now; True when its metrics were updated."""
        return await self._scrape(ep, self.source())

    async def _scrape(self, ep: Endpoint, src: ScrapeSource | None) -> bool:
        stats = self.stats.setdefault(ep.address, ScrapeStats())
        inf = ep.inflight
        # This gateway's own load, all of it before the GET (the page is the server's state at some
        # point during it): what is sent during it counts as not on the page.
        own_requests, own_decoding, own_started = inf.requests, inf.decoding, inf.started - inf.started_base
        own_sent_tokens, own_unstarted_tokens = inf.sent_tokens - inf.sent_base, inf.unstarted_tokens
        try:
            mapping_for(ep.engine)
            query = filter_query(ep.engine)
            text = None
            to = self.target(ep, src)
            if query is not None and self._filter_now(ep.address):
                text = await self._get(ep, to, f"{to.path.rstrip('/')}/?{query}", no_filter_is_none=True)
                if text is None or not page_has_signals(text, ep.engine):
                    text = await self._get(ep, to, to.path)
                    # Only an answer to the plain request proves the filter was the problem.
                    self._unfiltered[ep.address] = self.clock() + UNFILTERED_RETRY_S
                    log.info(
                        "%s does not filter its metrics page: scraping it whole for %.0f s",
                        ep.address,
                        UNFILTERED_RETRY_S,
                    )
            if text is None:
                text = await self._get(ep, to, to.path)
            assert text is not None
            prev = ep.metrics
            last = self._last_page.get(ep.address)
            if last is not None and last[2] is prev and last[1] == ep.engine and last[0] == text:
                # The page the current metrics were read from, again: the same signals, newly stamped.
                m = replace(prev, updated_at=self.clock())
            else:
                m = extract(text, ep.engine, self.clock(), prev)
            # This gateway's own load beside the page (the utilization detector's carry-forward).
            m.own_explained = m.waiting_queue_size + m.running_requests <= own_requests
            # A first token that arrived during the GET may be a request the page already shows running
            # (started before the page was rendered): it leaves the requests the page can show waiting,
            # or the carried queue would later take it out of the page's waiting count as well. (If it
            # was waiting on the page after all, the queue is overstated until the next scrape.)
            # Counted by first tokens (a count that only grows, every ``--workers`` worker's: finishes
            # during the GET do not hide starts), or by the net change of ``decoding`` where that is more
            # (a fold that read another worker's row half written).
            started = max(0, inf.started - inf.started_base - own_started, inf.decoding - own_decoding)
            unstarted = max(0, own_requests - own_decoding)
            m.own_pending = max(0, unstarted - started)
            # Its requests without a first token that the page shows running beyond its decoding ones
            # are in prefill, their blocks allocated: their tokens are in the page's KV. The rest
            # (waiting, or not at the server yet) hold no blocks: their share of the tokens of its
            # requests without a first token counts as sent after the page.
            prefill = min(unstarted, max(0, m.running_requests - own_decoding))
            off_page = (unstarted - prefill) / unstarted if unstarted else 1.0
            m.own_sent_tokens = own_sent_tokens - round(own_unstarted_tokens * off_page)
            # Those in prefill are in ``own_pending`` but not in the page's waiting count (less the ones
            # started during the GET, already out of ``own_pending``): the first starts after the page
            # are taken as theirs, not as requests leaving the page's queue (review s8-final-c C1).
            m.own_prefill = max(0, prefill - started)
            m.own_started = inf.started - inf.started_base
            ep.metrics = m
            self._last_page[ep.address] = (text, ep.engine, m)
        except (
            aiohttp.ClientError,
            TimeoutError,
            ValueError,
            UnicodeDecodeError,
            OSError,
            PageError,
            ScrapeStatusError,
        ) as e:
            stats.failed += 1
            ep.scrape_failures += 1
            if stats.last_error != repr(e):
                log.warning("scrape of %s failed: %r", ep.address, e)
            stats.last_error = repr(e)
            return False
        stats.ok += 1
        stats.last_error = None
        ep.scrape_failures = 0
        return True

    def _forget_lean(self, addr: str) -> None:
        self._client_keys.pop(addr, None)
        client = self._clients.pop(addr, None)
        if client is not None:
            client.close()
        for key in [k for k in self._requests if k[0] == addr]:
            del self._requests[key]

    def _lean_now(self, address: str) -> bool:
        until = self._aiohttp_only.get(address)
        if until is None:
            return True
        if self.clock() < until:
            return False
        del self._aiohttp_only[address]  # time to try the lean client again
        return True

    def _filter_now(self, address: str) -> bool:
        until = self._unfiltered.get(address)
        if until is None:
            return True
        if self.clock() < until:
            return False
        del self._unfiltered[address]  # time to ask filtered again
        return True

    async def _get(self, ep: Endpoint, to: _Target, path: str, no_filter_is_none: bool = False) -> str | None:
        """One GET of a metrics page, size-capped; None for an answer in ``NO_FILTER_STATUSES`` when
        ``no_filter_is_none``."""
        if self.http == "lean" and self._lean_now(ep.address):
            try:
                return await self._get_lean(ep, to, path, no_filter_is_none)
            except _NeedsAiohttp as e:
                self._aiohttp_only[ep.address] = self.clock() + UNFILTERED_RETRY_S
                log.info("%s: %s; scraping it with aiohttp", ep.address, e)
                self._forget_lean(ep.address)  # its kept-alive connection would idle until removal
        return await self._get_aiohttp(ep, to, path, no_filter_is_none)

    async def _get_lean(self, ep: Endpoint, to: _Target, path: str, no_filter_is_none: bool) -> str | None:
        addr = ep.address
        tls = None
        if to.scheme == "https":
            if to.tls is None:  # the system's CAs, as aiohttp's ssl=True; loaded once
                if self._system_tls is None:
                    self._system_tls = ssl.create_default_context()
                to = replace(to, tls=self._system_tls)
            tls = to.tls
        key = (to.address, to.scheme, id(tls), to.path)
        if addr in self._clients and self._client_keys.get(addr) != key:
            self._forget_lean(addr)  # the config's source changed (a reload): a new client
        client = self._clients.get(addr)
        if client is None:
            try:
                client = PageClient(to.address, tls=tls, max_bytes=self.max_bytes)
            except ValueError as e:  # not host:port: aiohttp's URL handling decides
                raise _NeedsAiohttp(str(e)) from None
            self._clients[addr] = client
            self._client_keys[addr] = key
        request = self._requests.get((addr, path))
        if request is None:
            request = self._requests[(addr, path)] = client.request_bytes(path)
        async with asyncio.timeout(self.timeout_s):
            page = await client.get(request)
        if page.status < 500:  # a 2xx-4xx answer, 404 included: the server is alive
            ep.answered_at = self.clock()
        if page.status in REDIRECT_STATUSES:
            raise _NeedsAiohttp(f"answered {page.status} (a redirect)")
        if page.headers.get("content-encoding", "identity").lower() != "identity":
            # Never asked for (no Accept-Encoding), and the aiohttp path does not decode either.
            raise ValueError(f"/metrics body is {page.headers['content-encoding']!r}-encoded")
        if page.status != 200:
            if no_filter_is_none and page.status in NO_FILTER_STATUSES:
                return None
            raise ScrapeStatusError(page.status)
        return page.body.decode("utf-8", "replace")

    async def _get_aiohttp(self, ep: Endpoint, to: _Target, path: str, no_filter_is_none: bool) -> str | None:
        async with self._session_().get(
            f"{to.scheme}://{to.address}{path}", timeout=self.timeout, ssl=to.tls or True
        ) as resp:
            if resp.status < 500:  # a 2xx-4xx answer, 404 included: the server is alive
                ep.answered_at = self.clock()
            if resp.status != 200:
                if no_filter_is_none and resp.status in NO_FILTER_STATUSES:
                    return None
                raise aiohttp.ClientResponseError(
                    resp.request_info, resp.history, status=resp.status, message="bad status"
                )
            if (resp.content_length or 0) > self.max_bytes:
                raise ValueError(f"/metrics body of {resp.content_length} bytes over {self.max_bytes}")
            parts: list[bytes] = []
            size = 0
            async for part in resp.content.iter_any():
                size += len(part)
                if size > self.max_bytes:
                    raise ValueError(f"/metrics body over {self.max_bytes} bytes")
                parts.append(part)
            return b"".join(parts).decode("utf-8", "replace")

    async def scrape_all(self) -> int:
        """One round over every endpoint, concurrently; returns how many succeeded."""
        results = await asyncio.gather(*(self.scrape(ep) for ep in self.store.all()))
        return sum(results)


def is_fresh(ep: Endpoint, now: float, staleness: float = PICKER_STALENESS_S) -> bool:
    t = ep.metrics.updated_at
    return t is not None and now - t <= staleness
