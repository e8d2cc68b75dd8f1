"""MetricsScraper against real HTTP servers on loopback (small aiohttp apps serving /metrics pages)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from kvgate.config.director import build_director
from kvgate.datalayer.mappings import filter_query
from kvgate.datalayer.scraper import QUIET_S, UNFILTERED_RETRY_S, MetricsScraper, is_fresh
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.flowcontrol.saturation import UtilizationDetector
from kvgate.scheduling.framework import PluginHandle
from kvgate.scheduling.types import InferenceRequest

from ._metrics_page import one_endpoint, scrape_once


class FakeServer:
    def __init__(self) -> None:
        self.page = 'vllm:num_requests_waiting{model_name="m"} 0\n'
        self.status = 200
        self.hits = 0
        self.during: Callable[[], None] = lambda: None  # runs while a request is being answered
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        page = self.page  # the server's state when the request arrived
        self.during()
        return web.Response(text=page, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[list[FakeServer]]:
    srv = [FakeServer() for _ in range(3)]
    for s in srv:
        await s.start()
    yield srv
    for s in srv:
        await s.stop()


async def test_scrape_all_and_engines(servers: list[FakeServer]) -> None:
    servers[
        0
    ].page = 'vllm:num_requests_waiting{model_name="m"} 4\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
    servers[1].page = 'sglang:num_queue_reqs{model_name="m"} 2\nsglang:token_usage 0.25\n'
    servers[2].status = 500
    store = EndpointStore(
        [
            make_endpoint(servers[0].address),
            make_endpoint(servers[1].address, engine="sglang"),
            make_endpoint(servers[2].address),
        ]
    )
    now = [10.0]
    scraper = MetricsScraper(store, clock=lambda: now[0])
    try:
        assert await scraper.scrape_all() == 2
    finally:
        await scraper.stop()
    a, b, c = (store.get(s.address) for s in servers)
    assert a is not None and b is not None and c is not None
    assert (a.metrics.waiting_queue_size, a.metrics.kv_cache_usage, a.metrics.updated_at) == (4, 0.5, 10.0)
    assert (b.metrics.waiting_queue_size, b.metrics.kv_cache_usage) == (2, 0.25)
    assert c.metrics.updated_at is None and scraper.stats[c.address].failed == 1
    assert is_fresh(a, 11.0) and not is_fresh(a, 12.5) and not is_fresh(c, 10.0)


async def _until(cond: Callable[[], bool], within_s: float = 10.0) -> None:
    """Wait for a background loop's effect (polled; a fixed sleep flakes on a loaded machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not cond():
        assert loop.time() < deadline, f"not reached within {within_s}s"
        await asyncio.sleep(0.005)


async def test_background_loop_follows_store_changes(servers: list[FakeServer]) -> None:
    store = EndpointStore([make_endpoint(servers[0].address)])
    async with MetricsScraper(store, interval=0.01):
        await _until(lambda: servers[0].hits >= 3)
        store.add(make_endpoint(servers[1].address))
        store.remove(servers[0].address)
        hits0 = servers[0].hits
        # Three scrapes of the added endpoint: time for three of the removed one's, had it kept scraping.
        await _until(lambda: servers[1].hits >= 3)
        assert servers[0].hits <= hits0 + 1  # its task was cancelled on removal (one may be in flight)
        servers[1].page = 'vllm:num_requests_waiting{model_name="m"} 7\n'

        def seven() -> bool:
            ep = store.get(servers[1].address)
            return ep is not None and ep.metrics.waiting_queue_size == 7

        await _until(seven)


async def test_unreachable_endpoint_goes_stale() -> None:
    store = EndpointStore([make_endpoint("127.0.0.1:1")])  # nothing listens on port 1
    scraper = MetricsScraper(store, timeout=1.0)
    try:
        assert await scraper.scrape_all() == 0
    finally:
        await scraper.stop()
    ep = store.get("127.0.0.1:1")
    assert ep is not None and ep.metrics.updated_at is None


class RoutedServer:
    """``/metrics`` serves the whole page; ``/metrics/`` answers as ``filtered`` says (vLLM 0.32: the
    bare path is prometheus-fastapi-instrumentator's handler, ``/metrics/`` prometheus_client's app)."""

    def __init__(self, filtered: str) -> None:
        self.filtered = filtered  # "honour" | "html" | "500"
        self.statuses: list[int] = []  # answered first, one per filtered request, before ``filtered``
        self.plain_hits = 0
        self.filtered_queries: list[list[str]] = []
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def _plain(self, request: web.Request) -> web.Response:
        self.plain_hits += 1
        return web.Response(text='vllm:num_requests_waiting{model_name="m"} 3\n# 40 KB of histograms\n')

    async def _filtered(self, request: web.Request) -> web.Response:
        self.filtered_queries.append(sorted(request.query.getall("name[]", [])))
        if self.statuses:
            return web.Response(status=self.statuses.pop(0), text="busy")
        if self.filtered == "html":
            return web.Response(text="<html>index</html>", content_type="text/html")
        if self.filtered == "500":
            return web.Response(status=500)
        return web.Response(text='vllm:num_requests_waiting{model_name="m"} 5\n')

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._plain)
        app.router.add_get("/metrics/", self._filtered)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.address = f"127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.mark.parametrize("http", ["lean", "aiohttp"])
async def test_asks_only_for_the_series_it_reads_and_falls_back_once(http: str) -> None:
    honour, html, failing = RoutedServer("honour"), RoutedServer("html"), RoutedServer("500")
    plain = FakeServer()  # only /metrics: the filtered request is a 404
    plain.page = 'vllm:num_requests_waiting{model_name="m"} 2\n'
    servers = (honour, html, failing, plain)
    for s in servers:
        await s.start()
    store = EndpointStore([make_endpoint(s.address) for s in servers])
    scraper = MetricsScraper(store, http=http)
    try:
        for _ in range(3):
            assert await scraper.scrape_all() == 3  # all but the one failing
    finally:
        await scraper.stop()
        for s in servers:
            assert s.runner is not None
            await s.runner.cleanup()
    eps = [store.get(s.address) for s in servers]
    assert [ep.metrics.waiting_queue_size for ep in eps if ep is not None] == [5, 3, 0, 2]
    # Filtered every time, with exactly the series extract() reads; the whole page never asked for.
    assert honour.plain_hits == 0 and len(honour.filtered_queries) == 3
    assert "vllm:num_requests_waiting" in honour.filtered_queries[0]
    assert "vllm:kv_cache_usage_perc" in honour.filtered_queries[0]
    assert "vllm:cache_config_info" in honour.filtered_queries[0]
    # A page without the series, or a 404: one filtered try, then the whole page, no round lost.
    assert len(html.filtered_queries) == 1 and html.plain_hits == 3
    assert plain.hits == 3
    # A 5xx is a failing server, not a missing filter: no fallback, it stays stale.
    assert len(failing.filtered_queries) == 3 and failing.plain_hits == 0
    assert eps[2] is not None and eps[2].metrics.updated_at is None


async def test_filtered_scrape_of_a_real_prometheus_client_exposition() -> None:
    """prometheus_client's own exposition (what vLLM and SGLang mount): a collector whose series the
    picker does not read is never even collected."""
    from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

    reg = CollectorRegistry()
    Gauge("vllm:num_requests_waiting", "w", ["model_name"], registry=reg).labels("m").set(4)
    Gauge("vllm:kv_cache_usage_perc", "kv", ["model_name"], registry=reg).labels("m").set(0.25)
    Gauge("vllm:cache_config_info", "c", ["block_size", "num_gpu_blocks"], registry=reg).labels(
        "128", "64"
    ).set(1)
    hist = Histogram("vllm:time_to_first_token_seconds", "t", ["model_name"], registry=reg)
    collected = [0]
    orig = hist.collect

    def counting_collect():  # type: ignore[no-untyped-def]
        collected[0] += 1
        return orig()

    hist.collect = counting_collect  # type: ignore[method-assign]
    hist.labels("m").observe(0.1)
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        ep = make_endpoint(f"127.0.0.1:{httpd.server_port}")
        scraper = MetricsScraper(EndpointStore([ep]))
        try:
            assert await scraper.scrape_all() == 1
            assert await scraper.scrape_all() == 1
        finally:
            await scraper.stop()
    finally:
        httpd.shutdown()
        thread.join(5)
    m = ep.metrics
    assert (m.waiting_queue_size, m.kv_cache_usage, m.block_size, m.num_gpu_blocks) == (4, 0.25, 128, 64)
    assert collected[0] == 0
    assert not scraper._unfiltered


async def test_a_busy_answer_to_the_filtered_request_is_a_failed_scrape_not_a_missing_filter() -> None:
    """429 / 408 from a loaded API server say nothing about filtering: the scrape fails like a 5xx and
    the next one asks filtered again; the whole page is never fetched."""
    srv = RoutedServer("honour")
    srv.statuses = [429, 408]
    await srv.start()
    store = EndpointStore([make_endpoint(srv.address)])
    scraper = MetricsScraper(store)
    try:
        assert [await scraper.scrape_all() for _ in range(4)] == [0, 0, 1, 1]
    finally:
        await scraper.stop()
        assert srv.runner is not None
        await srv.runner.cleanup()
    assert len(srv.filtered_queries) == 4 and srv.plain_hits == 0
    assert not scraper._unfiltered
    ep = store.get(srv.address)
    assert ep is not None and ep.metrics.waiting_queue_size == 5


@pytest.mark.parametrize("status", [400, 404, 405])
async def test_a_server_that_cannot_filter_is_scraped_whole_then_asked_again(status: int) -> None:
    """400/404/405 mean no filtering handler: the whole page for UNFILTERED_RETRY_S of the scraper's
    clock, then the filter again (a server restarted into a version that filters is not missed)."""
    srv = RoutedServer("honour")
    srv.statuses = [status, status]
    await srv.start()
    now = [100.0]
    store = EndpointStore([make_endpoint(srv.address)])
    scraper = MetricsScraper(store, clock=lambda: now[0])
    waiting = []
    try:
        for t in (100.0, 101.0, 100.0 + UNFILTERED_RETRY_S - 1, 100.0 + UNFILTERED_RETRY_S):
            now[0] = t
            assert await scraper.scrape_all() == 1
            ep = store.get(srv.address)
            assert ep is not None
            waiting.append(ep.metrics.waiting_queue_size)
        # It refused the retry too: another UNFILTERED_RETRY_S of whole pages; then it filters.
        assert await scraper.scrape_all() == 1
        assert len(srv.filtered_queries) == 2 and srv.plain_hits == 5
        now[0] = 100.0 + 2 * UNFILTERED_RETRY_S
        assert await scraper.scrape_all() == 1
        assert await scraper.scrape_all() == 1
    finally:
        await scraper.stop()
        assert srv.runner is not None
        await srv.runner.cleanup()
    # The plain page says 3, the filtered one 5: a filtered try + the whole page, whole, whole, a retry
    # + the whole page; then filtered twice.
    assert waiting == [3, 3, 3, 3]
    assert len(srv.filtered_queries) == 4 and srv.plain_hits == 5
    assert not scraper._unfiltered
    assert ep.metrics.waiting_queue_size == 5


async def test_sglang_is_scraped_whole_because_its_multiprocess_exposition_cannot_filter(
    tmp_path: Path,
) -> None:
    """SGLang's /metrics: make_asgi_app over a fresh registry holding only a MultiProcessCollector.
    That registry knows no series names, so ``?name[]=`` renders nothing (shown here on prometheus_client
    itself, from a real multiprocess value file); the scraper therefore never asks SGLang filtered."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    values = MmapedDict(str(tmp_path / "gauge_mostrecent_1.db"))
    for name, value in (("sglang:num_queue_reqs", 2.0), ("sglang:token_usage", 0.5)):
        values.write_value(mmap_key(name, name, ["model_name"], ["m"], "h"), value, 1.0)
    values.close()
    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=str(tmp_path))
    httpd, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        address = f"127.0.0.1:{httpd.server_port}"
        query = f"http://{address}/metrics/?name[]=sglang:num_queue_reqs"
        async with aiohttp.ClientSession() as session, session.get(query) as resp:
            assert resp.status == 200 and (await resp.text()) == ""
        assert filter_query("sglang") is None and filter_query("vllm") is not None
        store = EndpointStore([make_endpoint(address, engine="sglang")])
        scraper = MetricsScraper(store)
        try:
            assert await scraper.scrape_all() == 1
        finally:
            await scraper.stop()
    finally:
        httpd.shutdown()
        thread.join(5)
    ep = store.get(address)
    assert ep is not None and (ep.metrics.waiting_queue_size, ep.metrics.kv_cache_usage) == (2, 0.5)


def test_the_interval_is_quiet_only_while_its_own_in_flight_requests_explain_the_load() -> None:
    ep = make_endpoint("127.0.0.1:1")
    scraper = MetricsScraper(EndpointStore([ep]), interval=0.05, quiet_interval=0.1)
    assert scraper.next_interval(ep) == 0.05  # never scraped: nothing is known yet
    ep.metrics = replace(ep.metrics, updated_at=1.0)
    assert scraper.next_interval(ep) == 0.1  # idle
    ep.metrics = replace(ep.metrics, waiting_queue_size=1, running_requests=2)
    assert scraper.next_interval(ep) == 0.05  # load the gateway did not send
    ep.inflight.requests = 3
    assert scraper.next_interval(ep) == 0.1  # ... unless it is its own three requests
    ep.inflight.requests = 2
    assert scraper.next_interval(ep) == 0.05  # one of three is someone else's
    ep.inflight.requests = 3
    ep.scrape_failures = 1
    assert scraper.next_interval(ep) == 0.05  # the last scrape failed: what it showed is old
    # The default: QUIET_S (0.5 s), at most half of what the pool's saturation detector can bridge
    # (its scrape_bound), never faster than the interval; not told: 2x the interval, at most 0.1 s.
    assert MetricsScraper(EndpointStore()).quiet_interval == 0.1
    assert MetricsScraper(EndpointStore(), interval=0.02).quiet_interval == 0.04
    assert MetricsScraper(EndpointStore(), interval=0.5).quiet_interval == 0.5
    assert MetricsScraper(EndpointStore(), quiet_bound=1.0).quiet_interval == QUIET_S == 0.5
    assert MetricsScraper(EndpointStore(), quiet_bound=math.inf).quiet_interval == 0.5
    assert MetricsScraper(EndpointStore(), quiet_bound=0.6).quiet_interval == 0.3
    assert MetricsScraper(EndpointStore(), quiet_bound=0.2).quiet_interval == 0.1
    assert MetricsScraper(EndpointStore(), interval=0.8, quiet_bound=1.0).quiet_interval == 0.8


async def test_each_page_keeps_the_gateways_own_load_beside_it(servers: list[FakeServer]) -> None:
    """What the utilization detector needs to carry a page forward (``ownLoadStalenessThreshold``):
    was the page's load all this gateway's, its requests without a first token, and the running total
    of tokens sent when the page was asked for."""
    srv = servers[0]
    srv.page = 'vllm:num_requests_waiting{model_name="m"} 1\nvllm:num_requests_running{model_name="m"} 2\n'
    store, ep = one_endpoint(srv.address)
    ep.inflight.requests, ep.inflight.decoding, ep.inflight.sent_tokens = 3, 2, 777
    scraper = MetricsScraper(store)
    try:
        assert await scraper.scrape(ep)
        m = ep.metrics
        assert (m.own_explained, m.own_pending, m.own_sent_tokens) == (True, 1, 777)
        ep.inflight.requests = 2  # one of the three on the page is someone else's
        assert await scraper.scrape(ep)
        assert (ep.metrics.own_explained, ep.metrics.own_pending) == (False, 0)
    finally:
        await scraper.stop()


async def test_scrapes_slower_while_its_own_in_flight_requests_explain_the_load(
    servers: list[FakeServer],
) -> None:
    """The background loop against a real server, paced by an injected sleep that records each pause
    and sets up the next state: no wall-clock rates. Intervals of seconds make the scrape's own
    duration (subtracted from the pause) irrelevant."""
    srv = servers[0]
    store, ep = one_endpoint(srv.address)
    page = 'vllm:num_requests_waiting{model_name="m"} %d\nvllm:num_requests_running{model_name="m"} %d\n'
    # (waiting, running, the gateway's own in flight) for each scrape in turn
    states = [(0, 0, 0), (1, 2, 0), (1, 2, 3), (1, 2, 2), (0, 0, 0)]
    pauses: list[float] = []
    done = asyncio.Event()

    def apply(waiting: int, running: int, own: int) -> None:
        srv.page = page % (waiting, running)
        ep.inflight.requests = own

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == len(states):
            done.set()
            await asyncio.Event().wait()  # parked until stop() cancels the loop
        apply(*states[len(pauses)])

    apply(*states[0])
    async with MetricsScraper(store, interval=10.0, quiet_interval=40.0, sleep=sleep):
        await asyncio.wait_for(done.wait(), 30)
    assert srv.hits == len(states)
    quiet, busy = [p > 30 for p in pauses], [p <= 10 for p in pauses]
    # idle, foreign load, its own load, mixed, idle again
    assert quiet == [True, False, True, False, True], pauses
    assert busy == [False, True, False, True, False], pauses


async def test_scrapes_go_over_one_kept_alive_connection_without_aiohttp(servers: list[FakeServer]) -> None:
    """The lean client (``pageclient``) by default: one connection per endpoint for every scrape, and
    no aiohttp session at all while every server answers plainly."""
    store = EndpointStore([make_endpoint(s.address) for s in servers[:2]])
    scraper = MetricsScraper(store)
    try:
        for _ in range(5):
            assert await scraper.scrape_all() == 2
        assert {a: c.connects for a, c in scraper._clients.items()} == {s.address: 1 for s in servers[:2]}
        assert scraper._session is None
    finally:
        await scraper.stop()
    assert not scraper._clients
    assert servers[0].hits == servers[1].hits == 5


async def test_a_server_that_redirects_is_scraped_with_aiohttp_which_follows() -> None:
    app = web.Application()
    hits = {"redirect": 0, "page": 0}

    async def redirect(request: web.Request) -> web.Response:
        hits["redirect"] += 1
        raise web.HTTPTemporaryRedirect("/real" + request.path_qs)

    async def page(request: web.Request) -> web.Response:
        hits["page"] += 1
        return web.Response(text='vllm:num_requests_waiting{model_name="m"} 6\n')

    app.router.add_get("/metrics", redirect)
    app.router.add_get("/metrics/", redirect)
    app.router.add_get("/real/metrics", page)
    app.router.add_get("/real/metrics/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    address = f"127.0.0.1:{runner.addresses[0][1]}"
    store = EndpointStore([make_endpoint(address)])
    scraper = MetricsScraper(store)
    try:
        assert await scraper.scrape_all() == 1  # the lean client's redirect answer, then aiohttp
        assert await scraper.scrape_all() == 1
    finally:
        await scraper.stop()
        await runner.cleanup()
    ep = store.get(address)
    assert ep is not None and ep.metrics.waiting_queue_size == 6
    assert set(scraper._aiohttp_only) == {address} and hits == {"redirect": 3, "page": 2}


async def test_an_endpoint_removed_closes_its_connection(servers: list[FakeServer]) -> None:
    store = EndpointStore([make_endpoint(servers[0].address)])
    scraper = MetricsScraper(store)
    await scraper.start()
    try:
        assert await scraper.scrape_all() == 1
        client = scraper._clients[servers[0].address]
        store.remove(servers[0].address)
        assert servers[0].address not in scraper._clients
        assert client._reader is None
        assert not any(k[0] == servers[0].address for k in scraper._requests)
    finally:
        await scraper.stop()


async def test_https_scrapes_verify_the_server_over_the_lean_client(tmp_path: Path) -> None:
    """An https pool with a caFile (which set the scraper's scheme and CA): the lean client speaks TLS
    with the given context (server name checked against the address); a server the context does not
    trust fails."""
    import ssl

    from kvgate.httpfront.tls import self_signed

    pair = self_signed(("127.0.0.1",))
    (tmp_path / "c.pem").write_bytes(pair.cert_pem)
    (tmp_path / "k.pem").write_bytes(pair.key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    srv = FakeServer()
    app = web.Application()
    app.router.add_get("/metrics", srv._metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    address = f"127.0.0.1:{runner.addresses[0][1]}"
    srv.page = 'vllm:num_requests_waiting{model_name="m"} 8\n'
    trusted = MetricsScraper(
        EndpointStore([make_endpoint(address)]),
        scheme="https",
        tls=ssl.create_default_context(cadata=pair.cert_pem.decode()),
    )
    untrusted = MetricsScraper(EndpointStore([make_endpoint(address)]), scheme="https")
    try:
        assert await trusted.scrape_all() == 1 and await trusted.scrape_all() == 1
        assert trusted._session is None and trusted._clients[address].connects == 1
        assert await untrusted.scrape_all() == 0
        assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.stats[address].last_error or "")
    finally:
        await trusted.stop()
        await untrusted.stop()
        await runner.cleanup()
    ep = trusted.store.get(address)
    assert ep is not None and ep.metrics.waiting_queue_size == 8


async def test_the_switch_to_aiohttp_closes_the_lean_connection() -> None:
    """A redirect moves the endpoint to aiohttp: the lean client's kept-alive connection is closed
    then, not left idle until the endpoint is removed (review s7-scrape, finding 7)."""
    page = b'vllm:num_requests_waiting{model_name="m"} 6\n'
    closed: list[asyncio.Event] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        done = asyncio.Event()
        closed.append(done)
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1]
                if target.startswith(b"/real"):
                    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(page) + page)
                else:
                    w.write(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /real" + target)
                    w.write(b"\r\nContent-Length: 0\r\n\r\n")
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            done.set()  # the client closed this connection
        w.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    store = EndpointStore([make_endpoint(address)])
    scraper = MetricsScraper(store)
    try:
        assert await scraper.scrape_all() == 1
        assert set(scraper._aiohttp_only) == {address} and address not in scraper._clients
        await asyncio.wait_for(closed[0].wait(), 30)  # the first connection is the lean client's
    finally:
        await scraper.stop()
        server.close()
        await server.wait_closed()


async def test_a_304_is_a_failed_scrape_not_a_redirect(servers: list[FakeServer]) -> None:
    servers[0].status = 304
    store = EndpointStore([make_endpoint(servers[0].address)])
    scraper = MetricsScraper(store)
    try:
        assert await scraper.scrape_all() == 0
        assert not scraper._aiohttp_only  # still on the lean client
        assert "304" in (scraper.stats[servers[0].address].last_error or "")
    finally:
        await scraper.stop()


async def test_a_redirecting_endpoint_tries_the_lean_client_again_later() -> None:
    """The switch to aiohttp lasts ``UNFILTERED_RETRY_S``: a server restarted without its redirect
    goes back to the cheaper client."""
    redirecting = [True]

    async def metrics(request: web.Request) -> web.Response:
        if redirecting[0] and not request.path.startswith("/real"):
            raise web.HTTPTemporaryRedirect("/real" + request.path_qs)
        return web.Response(text='vllm:num_requests_waiting{model_name="m"} 2\n')

    app = web.Application()
    for p in ("/metrics", "/metrics/", "/real/metrics", "/real/metrics/"):
        app.router.add_get(p, metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    address = f"127.0.0.1:{runner.addresses[0][1]}"
    now = [1000.0]
    scraper = MetricsScraper(EndpointStore([make_endpoint(address)]), clock=lambda: now[0])
    try:
        assert await scraper.scrape_all() == 1
        assert address in scraper._aiohttp_only and address not in scraper._clients
        redirecting[0] = False
        now[0] += UNFILTERED_RETRY_S - 1
        assert await scraper.scrape_all() == 1
        assert address not in scraper._clients  # still aiohttp
        now[0] += 2
        assert await scraper.scrape_all() == 1
        assert address in scraper._clients and not scraper._aiohttp_only  # lean again
    finally:
        await scraper.stop()
        await runner.cleanup()


# -- review s8-sat: the gateway's own load beside each page, and the carry-forward it feeds --------------

_PAGE = (
    'vllm:num_requests_waiting{model_name="m"} %d\n'
    'vllm:num_requests_running{model_name="m"} %d\n'
    'vllm:kv_cache_usage_perc{model_name="m"} 0.05\n'
    'vllm:cache_config_info{block_size="128",num_gpu_blocks="64"} 1\n'
)  # 8,192 tokens of KV cache


def _carrying() -> UtilizationDetector:
    return UtilizationDetector("u", PluginHandle(), own_load_staleness=1.0)


async def _page_with_own(srv: FakeServer, waiting: int, n: int, prompt: int, decode: int):  # type: ignore[no-untyped-def]
    """The page at t=0 with ``n`` requests of this gateway's own dispatched before it, none started."""
    store, ep = one_endpoint(srv.address)
    director = build_director("round-robin", store, clock=lambda: 0.0, seed=0)
    reqs = [InferenceRequest(f"r{i}", "m", prompt_tokens=prompt, max_tokens=decode) for i in range(n)]
    for r in reqs:
        director.on_dispatched(r, ep)
    srv.page = _PAGE % (waiting, 0)
    await scrape_once(ep, store)
    return ep, director, reqs


@pytest.mark.parametrize("waiting", [5, 0])
async def test_the_kv_of_its_requests_not_started_at_the_page_counts_when_they_start(
    servers: list[FakeServer], waiting: int
) -> None:
    """s8-sat B1: requests sent before the page that were waiting on it (``waiting`` 5), or not on it at
    all (still in the server's API process, ``waiting`` 0), hold no KV on the page. Failed before: only
    tokens sent after the page counted, so once they started the carried score was 0.0625 (the page's
    5 % KV) for a full cache."""
    ep, director, reqs = await _page_with_own(servers[0], waiting, 5, prompt=1_500, decode=100)
    d = _carrying()
    for r in reqs:  # t=0.3: the server has started all five: 5 x 1,600 of 8,192 tokens
        director.on_first_token(r, ep)
    score = d.endpoint_saturation(ep, 0.3)
    assert score >= (0.05 + 5 * 1_600 / 8_192) / 0.8 - 1e-9, f"score {score:.4f}"
    assert d.endpoint_saturation(ep, 0.1) == pytest.approx(score)  # the same at any age


async def test_its_load_is_read_before_the_scrape_is_sent(servers: list[FakeServer]) -> None:
    """s8-sat B4: requests dispatched while the GET is in flight are not on the page. Failed before:
    the requests were read after the GET, so the six sent during it never counted in the carried queue
    (0.154 for six of its own waiting), and three sent during it "explained" three running requests of
    someone else's."""
    srv = servers[0]
    store, ep = one_endpoint(srv.address)
    director = build_director("round-robin", store, clock=lambda: 0.0, seed=0)
    n = 0

    def dispatch(k: int) -> Callable[[], None]:
        def go() -> None:
            nonlocal n
            for _ in range(k):
                n += 1
                director.on_dispatched(InferenceRequest(f"r{n}", "m", prompt_tokens=90, max_tokens=10), ep)

        return go

    srv.page, srv.during = _PAGE % (0, 0), dispatch(6)  # idle when the GET arrived
    scraper = MetricsScraper(store, clock=lambda: 0.0)
    try:
        assert await scraper.scrape(ep)
        score = _carrying().endpoint_saturation(ep, 0.3)
        assert score >= 6 / 5, f"score {score:.4f} with 6 of its own requests not started"
        for i in range(1, n + 1):  # they finish
            director.on_finished(InferenceRequest(f"r{i}", "m"), ep, None, False)
        srv.page, srv.during = _PAGE % (0, 3), dispatch(3)  # three running, none of them its own
        assert await scraper.scrape(ep)
        assert ep.metrics.own_explained is False
    finally:
        await scraper.stop()


async def test_a_first_token_during_the_scrape_does_not_take_a_waiting_request_off_the_page(
    servers: list[FakeServer],
) -> None:
    """Read before the GET (s8-sat B4), its requests without a first token include two the page
    already shows running (started before the page was rendered, their first tokens arriving during
    the GET). Failed before: those two left the page's waiting count again when the carried queue took
    the change since, so three of its requests waiting read as one."""
    srv = servers[0]
    store, ep = one_endpoint(srv.address)
    director = build_director("round-robin", store, clock=lambda: 0.0, seed=0)
    five = [InferenceRequest(f"q{i}", "m", prompt_tokens=100, max_tokens=10) for i in range(5)]
    for r in five:
        director.on_dispatched(r, ep)

    def first_tokens() -> None:
        for r in five[:2]:
            director.on_first_token(r, ep)

    srv.page, srv.during = _PAGE % (3, 2), first_tokens  # 3 of its own waiting, 2 running
    await scrape_once(ep, store)
    assert _carrying().endpoint_saturation(ep, 0.3) >= 3 / 5


async def test_an_unchanged_page_is_not_parsed_again(
    servers: list[FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle server answers the same page scrape after scrape (issue #16: 4 scrapes a second were most
    of an idle gateway's CPU): the same text gives the same signals, so it is read once; the page's time
    and the gateway's own load beside it are still taken at every scrape."""
    from kvgate.datalayer import scraper as scraper_mod

    parsed: list[str] = []
    real = scraper_mod.extract

    def counting(text: str, *args: object, **kw: object) -> object:
        parsed.append(text)
        return real(text, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scraper_mod, "extract", counting)
    srv = servers[0]
    srv.page = 'vllm:num_requests_waiting{model_name="m"} 1\nvllm:num_requests_running{model_name="m"} 2\n'
    store, ep = one_endpoint(srv.address)
    now = [100.0]
    scraper = MetricsScraper(store, clock=lambda: now[0])
    try:
        ep.inflight.requests, ep.inflight.decoding = 3, 2
        assert await scraper.scrape(ep)
        first = ep.metrics
        now[0] = 100.5
        ep.inflight.requests = 2  # one of the three on the page is someone else's now
        assert await scraper.scrape(ep)
        assert len(parsed) == 1, "the same page was parsed again"
        m = ep.metrics
        assert m is not first and first.updated_at == 100.0  # a new reading; the old one untouched
        assert (m.waiting_queue_size, m.running_requests, m.updated_at) == (1, 2, 100.5)
        assert (m.own_explained, m.own_pending) == (False, 0)
        srv.page = srv.page.replace('waiting{model_name="m"} 1', 'waiting{model_name="m"} 0')
        assert await scraper.scrape(ep)
        assert len(parsed) == 2 and ep.metrics.waiting_queue_size == 0
        # Metrics set by something else since (a test, another feed): the page is read against them.
        ep.metrics = replace(ep.metrics, block_size=16)
        assert await scraper.scrape(ep)
        assert len(parsed) == 3 and ep.metrics.block_size == 16
    finally:
        await scraper.stop()


async def test_the_remembered_pages_go_with_their_endpoint_and_at_stop(servers: list[FakeServer]) -> None:
    """The last page per endpoint (kept to skip parsing it again) is bounded (left11): an endpoint that
    leaves the store takes its page along, and a stopped scraper keeps none (while stopped it hears of no
    removals, so a page kept over a stop could outlive its endpoint)."""
    store = EndpointStore([make_endpoint(s.address) for s in servers[:2]])
    scraper = MetricsScraper(store)
    await scraper.start()
    try:
        for s in servers[:2]:
            ep = store.get(s.address)
            assert ep is not None and await scraper.scrape(ep)
        assert set(scraper._last_page) == {servers[0].address, servers[1].address}
        store.remove(servers[0].address)
        assert set(scraper._last_page) == {servers[1].address}
    finally:
        await scraper.stop()
    assert not scraper._last_page
