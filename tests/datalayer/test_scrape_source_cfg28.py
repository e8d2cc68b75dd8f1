"""The picker config's ``metrics-data-source`` settings reach the scraper (cfg28): a real HTTP server
that serves its page only at a non-default path (or port, or over https with a self-signed certificate)
is scraped as the config says. Before cfg28 kvgate scraped ``/metrics`` and logged the path as "not
applied" (fails on main 2a9ab840: ``MetricsScraper`` takes no ``source``)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from kvgate.config.director import build_director, metrics_source
from kvgate.config.picker import load_config
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.scheduling.framework import ConfigError

from ._scrape_tls import PAGE, self_signed_files, server_context


class PathServer:
    """Serves the vLLM page at ``path`` only (``/metrics`` is a 404), on port 0 read back."""

    def __init__(self, path: str, tls: ssl.SSLContext | None = None) -> None:
        self.path, self.tls = path, tls
        self.hits: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def _page(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        return web.Response(text=PAGE)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.path, self._page)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls).start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def stats() -> AsyncIterator[PathServer]:
    srv = PathServer("/custom/stats")
    await srv.start()
    yield srv
    await srv.stop()


def _config(parameters: str) -> str:
    return (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        f"- type: metrics-data-source\n  parameters: {parameters}\n- type: core-metrics-extractor\n"
        "- type: queue-scorer\n"
        "data:\n  sources:\n  - pluginRef: metrics-data-source\n    extractors:\n"
        "    - pluginRef: core-metrics-extractor\n"
    )


async def _scrape(address: str, parameters: str, http: str = "lean") -> tuple[bool, int]:
    store = EndpointStore([make_endpoint(address)])
    director = build_director(load_config(_config(parameters)), store, clock=lambda: 1.0, seed=0)
    # (a GET's time cap well above a loaded machine's stall; the default 2 s is the product's)
    scraper = MetricsScraper(
        store, clock=lambda: 1.0, timeout=30.0, source=lambda: metrics_source(director), http=http
    )
    try:
        ep = store.all()[0]
        ok = await scraper.scrape(ep)
        return ok, ep.metrics.waiting_queue_size
    finally:
        await scraper.stop()


@pytest.mark.parametrize("http", ["lean", "aiohttp"])
async def test_the_configs_path_is_scraped(stats: PathServer, http: str) -> None:
    ok, waiting = await _scrape(f"127.0.0.1:{stats.port}", "{path: /custom/stats}", http=http)
    assert (ok, waiting) == (True, 7)
    assert "/custom/stats" in stats.hits


async def test_without_the_source_the_default_path_misses_that_server(stats: PathServer) -> None:
    # (the control: the page is really only at the config's path)
    ok, _ = await _scrape(f"127.0.0.1:{stats.port}", "{path: /metrics}")
    assert not ok


async def test_the_configs_port_replaces_the_endpoints(stats: PathServer) -> None:
    # The endpoint's own port (1) serves nothing; the config's port override is where the page is.
    ok, waiting = await _scrape("127.0.0.1:1", f"{{path: /custom/stats, port: {stats.port}}}")
    assert (ok, waiting) == (True, 7)


async def test_https_with_insecure_skip_verify_reads_a_self_signed_server(tmp_path: Path) -> None:
    cert, key = self_signed_files(tmp_path)
    srv = PathServer("/m", server_context(cert, key))
    await srv.start()
    try:
        address = f"127.0.0.1:{srv.port}"
        # scheme https alone: the reference's insecureSkipVerify default (true) applies
        assert await _scrape(address, "{scheme: https, path: /m}") == (True, 7)
        # verified against the server's own certificate as the CA
        verified = f"{{scheme: https, path: /m, insecureSkipVerify: false, caCertPath: {cert}}}"
        assert await _scrape(address, verified) == (True, 7)
        # verified against the system's CAs: the self-signed server is refused
        ok, _ = await _scrape(address, "{scheme: https, path: /m, insecureSkipVerify: false}")
        assert not ok
    finally:
        await srv.stop()


@pytest.mark.parametrize(
    ("parameters", "error"),
    [
        ("{path: metrics}", "plugins[0].parameters.path: must start with '/'"),
        ("{port: 70000}", "plugins[0].parameters.port: must be in [1, 65535]"),
        ("{interval: soon}", "plugins[0].parameters.interval: must be a duration"),
        ("{insecureSkipVerify: false, caCertPath: /nonexistent/ca.pem}", "plugins[0].parameters.caCertPath:"),
        ("{clientCertPath: /x.pem}", "plugins[0].parameters.clientKeyPath: required with clientCertPath"),
        ("{families: [1]}", "plugins[0].parameters.families: must be a list of metric family names"),
    ],
)
def test_bad_settings_name_the_key(parameters: str, error: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(_config(parameters))
    assert str(e.value).startswith(error), str(e.value)


def test_a_second_data_source_is_refused() -> None:
    doc = _config("{}").replace(
        "- type: queue-scorer\n", "- type: queue-scorer\n- type: metrics-data-source\n  name: two\n"
    )
    with pytest.raises(ConfigError, match=r"^plugins\[3\]\.type: a second metrics-data-source"):
        load_config(doc)


def test_the_configs_interval_paces_the_scraper() -> None:
    store = EndpointStore([make_endpoint("127.0.0.1:1")])
    director = build_director(load_config(_config("{interval: 250ms}")), store, clock=lambda: 1.0)
    scraper = MetricsScraper(store, interval=0.05, source=lambda: metrics_source(director))
    assert scraper.busy_interval == 0.25
    assert scraper.next_interval(store.all()[0]) == 0.25  # (never scraped: not explained, the busy pace)
