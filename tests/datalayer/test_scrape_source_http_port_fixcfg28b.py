"""An https pool whose metrics-data-source says ``scheme: http`` with a ``port`` of its own (the engine's
plain /metrics beside a TLS sidecar's inference port) is scraped over plain http on that port; the pool's
https overrides the source's ``http`` only on the endpoint's own port (the chart's default source has no
port). Review s28-rev-fixes28a F1: the live case passes on 8c9d3f1c^, fails on 5d667046."""

from __future__ import annotations

import ssl
from pathlib import Path

from kvgate.datalayer.scrape_source import ScrapeSource, resolve
from kvgate.datalayer.store import EndpointStore, make_endpoint

from ._scrape_tls import https_pool_scraper, metrics_server, self_signed_files, server_context


async def test_scheme_http_on_its_own_port_is_honoured_for_an_https_pool(tmp_path: Path) -> None:
    cert, key = self_signed_files(tmp_path)
    tls_runner, tls_port = await metrics_server(server_context(cert, key))  # the pod's https inference port
    http_runner, http_port = await metrics_server(None)  # the engine's plain metrics port
    store = EndpointStore([make_endpoint(f"127.0.0.1:{tls_port}")])
    scraper = https_pool_scraper(store, f"{{scheme: http, port: {http_port}, path: /metrics}}", cert)
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
