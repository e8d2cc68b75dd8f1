"""An https pool whose metrics-data-source says ``scheme: http`` with a ``port`` of its own (the engine's
plain /metrics beside a TLS sidecar's inference port) is scraped over plain http on that port; the pool's
https overrides the source's ``http`` only on the endpoint's own port (the chart's default source has no
port). Review s28-rev-fixes28a F1: the live case passes on 8c9d3f1c^, fails on 5d667046."""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from kvgate.config.director import build_director, metrics_source
from kvgate.config.picker import load_config
from kvgate.datalayer.scrape_source import ScrapeSource, resolve
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.httpfront.tls import self_signed

PAGE = 'vllm:num_requests_waiting{model_name="m"} 7\nvllm:kv_cache_usage_perc{model_name="m"} 0.25\n'


async def _page(_: web.Request) -> web.Response:
    return web.Response(text=PAGE)


async def _server(ssl_context: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/metrics", _page)
    app.router.add_get("/metrics/", _page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()  # port 0, read back
    return runner, runner.addresses[0][1]


async def test_scheme_http_on_its_own_port_is_honoured_for_an_https_pool(tmp_path: Path) -> None:
    pair = self_signed()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    tls_runner, tls_port = await _server(server_tls)  # the pod's https inference port
    http_runner, http_port = await _server(None)  # the engine's plain metrics port
    store = EndpointStore([make_endpoint(f"127.0.0.1:{tls_port}")])
    cfg = (
        "plugins:\n- type: metrics-data-source\n"
        f"  parameters: {{scheme: http, port: {http_port}, path: /metrics}}\n- type: queue-scorer\n"
    )
    director = build_director(load_config(cfg), store, clock=lambda: 1.0, seed=0)
    scraper = MetricsScraper(
        store, clock=lambda: 1.0, timeout=30.0, scheme="https",
        tls=ssl.create_default_context(cafile=str(cert)), source=lambda: metrics_source(director),
    )  # fmt: skip
    try:
        assert await scraper.scrape(store.all()[0]), "the metrics port's plain-http page was not read"
        assert store.all()[0].metrics.waiting_queue_size == 7
    finally:
        await scraper.stop()
        await tls_runner.cleanup()
        await http_runner.cleanup()


def test_the_pools_https_overrides_http_only_on_the_endpoints_own_port() -> None:
    tls = ssl.create_default_context()
    for src, scheme in [
        (ScrapeSource(scheme="http"), "https"),  # the chart's default: the pool's https wins
        (ScrapeSource(scheme="http", port=8443), "https"),  # the endpoint's own port named: the same
        (ScrapeSource(scheme="http", port=8000), "http"),  # another listener: its http stands
    ]:
        r = resolve(src, "https", tls, "/metrics", 8443)
        assert (r.scheme, r.scheme_overridden) == (scheme, scheme == "https"), src
        assert r.tls is tls
