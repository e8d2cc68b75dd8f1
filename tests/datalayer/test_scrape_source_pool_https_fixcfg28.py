"""A config's ``metrics-data-source`` must not undo a ``kvgate serve`` pool's https scrape (review
s28-rev-cfg28 F1/F2, fixcfg28). ``kvgate serve`` builds the pool's scraper with ``scheme=pool.cfg.scheme``
("https" for ``https://host:port`` endpoints) and ``tls=`` a context verifying against the pool's
``caFile`` (gateway/server.py), and ``source=`` the picker config's data source. Both fail on main
ca67a4cb: the chart's ``scheme: "http"`` sent a plain GET to the TLS server; ``scheme: https`` alone
replaced the pool's verification with none."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest

from kvgate.config.director import build_director, metrics_source
from kvgate.config.picker import load_config
from kvgate.datalayer.scrape_source import ScrapeSource
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore, make_endpoint

from ._scrape_tls import metrics_server, self_signed_files, server_context


def _config(parameters: str) -> str:
    return (
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        f"- type: metrics-data-source\n  parameters: {parameters}\n- type: core-metrics-extractor\n"
        "- type: queue-scorer\n"
    )


async def _scrape_as_serve(port: int, pool_ca: Path, parameters: str, http: str = "lean") -> bool:
    store = EndpointStore([make_endpoint(f"127.0.0.1:{port}")])
    director = build_director(load_config(_config(parameters)), store, clock=lambda: 1.0, seed=0)
    pool_tls = ssl.create_default_context(cafile=str(pool_ca))  # the pool's caFile
    scraper = MetricsScraper(
        store, clock=lambda: 1.0, timeout=30.0, scheme="https", tls=pool_tls,
        source=lambda: metrics_source(director), http=http,
    )  # fmt: skip
    try:
        return await scraper.scrape(store.all()[0]) and await scraper.scrape(store.all()[0])
    finally:
        await scraper.stop()


@pytest.mark.parametrize("http", ["lean", "aiohttp"])
async def test_the_reference_charts_default_source_keeps_a_pools_https_scrape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, http: str
) -> None:
    # F1: the chart's default parameters (qa27's CHART_DEFAULT) say scheme "http"; the pool's endpoints
    # are https://. The pool's https wins, verified against its caFile, and one WARNING names the key.
    caplog.set_level(logging.WARNING, logger="kvgate.datalayer.scraper")
    cert, key = self_signed_files(tmp_path, "srv")
    other, _ = self_signed_files(tmp_path, "other")
    runner, port = await metrics_server(server_context(cert, key))
    try:
        chart = '{scheme: "http", path: "/metrics", insecureSkipVerify: true}'
        assert await _scrape_as_serve(port, cert, chart, http)
        said = [r.getMessage() for r in caplog.records if "parameters.scheme" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith("plugins[0].parameters.scheme: 'http' not applied"), said
        # (the pool's verification, not the chart's insecureSkipVerify: a CA it does not trust is refused)
        assert not await _scrape_as_serve(port, other, chart, http)
    finally:
        await runner.cleanup()


async def test_scheme_https_alone_keeps_the_pools_ca_verification(tmp_path: Path) -> None:
    # F2: the pool's caFile trusts another CA, so the server must be refused. ``scheme: https`` with no TLS
    # key turns the reference's insecureSkipVerify default on and replaces the pool's verifying context.
    cert, key = self_signed_files(tmp_path, "srv")
    other, _ = self_signed_files(tmp_path, "other")
    runner, port = await metrics_server(server_context(cert, key))
    try:
        assert not await _scrape_as_serve(port, other, "{}")  # (the control: refused without a source)
        assert not await _scrape_as_serve(port, other, "{scheme: https}")
    finally:
        await runner.cleanup()


async def test_the_source_is_looked_up_once_per_scrape() -> None:
    # F10: target, next_interval (quiet/busy) and the loop's floor each asked the source (a walk over the
    # pool's plugins) on main ca67a4cb: 3-4 lookups per scrape. One scrape of a refusing endpoint here.
    store = EndpointStore([make_endpoint("127.0.0.1:1")])
    director = build_director(load_config(_config("{path: /m}")), store, clock=lambda: 1.0, seed=0)
    calls = 0

    def source() -> ScrapeSource | None:
        nonlocal calls
        calls += 1
        return metrics_source(director)

    async def sleep(_: float) -> None:
        scraper._running = False  # (one round of the loop)

    scraper = MetricsScraper(store, clock=lambda: 1.0, timeout=30.0, source=source, sleep=sleep)
    try:
        scraper._running = True
        await scraper._loop(store.all()[0])
    finally:
        await scraper.stop()
    assert calls == 1


async def test_a_reloaded_path_drops_the_old_paths_prebuilt_requests() -> None:
    # Review s28-rev-cfg28 F12: the lean client was re-keyed on (address, scheme, tls) only, so after a
    # reload that changed only the path, the old path's prebuilt GETs stayed until the endpoint left
    # (fails on main ca67a4cb).
    runner, port = await metrics_server(None, ("/a", "/a/", "/b", "/b/"))
    store = EndpointStore([make_endpoint(f"127.0.0.1:{port}")])
    source = ScrapeSource(path="/a")
    scraper = MetricsScraper(store, clock=lambda: 1.0, timeout=30.0, source=lambda: source)
    try:
        assert await scraper.scrape(store.all()[0])
        source = ScrapeSource(path="/b")  # (a reload)
        assert await scraper.scrape(store.all()[0])
        assert {path.split("?")[0].rstrip("/") for _, path in scraper._requests} == {"/b"}
    finally:
        await scraper.stop()
        await runner.cleanup()
