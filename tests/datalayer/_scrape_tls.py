"""The setup shared by the metrics-data-source scrape tests over TLS (cfg28, fixcfg28, fixcfg28b,
rev-d28; folded by fixe28): a self-signed certificate's files, its server context, a /metrics page
server on port 0 read back, and ``kvgate serve``'s https pool scraper with a config's data source."""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from kvgate.config.director import build_director, metrics_source
from kvgate.config.picker import load_config
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore
from kvgate.httpfront.tls import self_signed

PAGE = 'vllm:num_requests_waiting{model_name="m"} 7\nvllm:kv_cache_usage_perc{model_name="m"} 0.25\n'


def self_signed_files(tmp: Path, tag: str = "srv") -> tuple[Path, Path]:
    """A fresh self-signed certificate and its key, as PEM files: (cert, key)."""
    pair = self_signed()
    cert, key = tmp / f"{tag}-c.pem", tmp / f"{tag}-k.pem"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    return cert, key


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def _page(_: web.Request) -> web.Response:
    return web.Response(text=PAGE)


async def metrics_server(
    ssl_context: ssl.SSLContext | None, paths: tuple[str, ...] = ("/metrics", "/metrics/")
) -> tuple[web.AppRunner, int]:
    """``PAGE`` at ``paths``, over TLS with ``ssl_context``: (runner, port), port 0 bound, read back."""
    app = web.Application()
    for path in paths:
        app.router.add_get(path, _page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
    return runner, runner.addresses[0][1]


def https_pool_scraper(store: EndpointStore, parameters: str, ca: Path) -> MetricsScraper:
    """``kvgate serve``'s scraper of an https pool whose CA is ``ca``, its source the ``metrics-data-source``
    of a config with ``parameters`` (the scrape's time cap, 30 s, well above a loaded machine's stall)."""
    cfg = f"plugins:\n- type: metrics-data-source\n  parameters: {parameters}\n- type: queue-scorer\n"
    director = build_director(load_config(cfg), store, clock=lambda: 1.0, seed=0)
    return MetricsScraper(
        store, clock=lambda: 1.0, timeout=30.0, scheme="https",
        tls=ssl.create_default_context(cafile=str(ca)), source=lambda: metrics_source(director),
    )  # fmt: skip
