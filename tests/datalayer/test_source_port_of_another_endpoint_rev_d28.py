"""Review s28-rev-d28 F1 (L): fixcfg28b's port rule (75478861) decides "the endpoint's own port" per
endpoint. In an https pool whose ``metrics-data-source`` says ``{scheme: http, port: A}`` where ``A`` is the
port of one of the pool's own (TLS) endpoints, the endpoint on ``A`` is scraped over https, but a second
endpoint of the same host (``B``) is sent to the same TLS listener ``A`` over plain http: every scrape of
it fails. On 75478861^ both read ``A`` over https. Both servers bind port 0 and are read back; the scrape
timeout is 30 s; no timing window."""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from kvgate.config.director import build_director, metrics_source
from kvgate.config.picker import load_config
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.httpfront.tls import self_signed

PAGE = 'vllm:num_requests_waiting{model_name="m"} 7\nvllm:kv_cache_usage_perc{model_name="m"} 0.25\n'


async def _page(_: web.Request) -> web.Response:
    return web.Response(text=PAGE)


async def _tls_server(ctx: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_get("/metrics", _page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()  # port 0, read back
    return runner, runner.addresses[0][1]


async def test_a_source_port_that_is_another_endpoints_tls_port_is_scraped_over_https(tmp_path: Path) -> None:
    pair = self_signed()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    a_runner, a = await _tls_server(server_tls)  # the pool's endpoint A (TLS), its metrics too
    b_runner, b = await _tls_server(server_tls)  # the pool's endpoint B (TLS), same host
    store = EndpointStore([make_endpoint(f"127.0.0.1:{a}"), make_endpoint(f"127.0.0.1:{b}")])
    cfg = (
        "plugins:\n- type: metrics-data-source\n"
        f"  parameters: {{scheme: http, port: {a}, path: /metrics}}\n- type: queue-scorer\n"
    )
    director = build_director(load_config(cfg), store, clock=lambda: 1.0, seed=0)
    scraper = MetricsScraper(
        store, clock=lambda: 1.0, timeout=30.0, scheme="https",
        tls=ssl.create_default_context(cafile=str(cert)), source=lambda: metrics_source(director),
    )  # fmt: skip
    by_port = {ep.address.rsplit(":", 1)[1]: ep for ep in store.all()}
    try:
        # (the control: the endpoint on A, its own port, scraped over the pool's https)
        assert await scraper.scrape(by_port[str(a)]), "endpoint A's own TLS port was not read"
        targets = {p: scraper.target(ep) for p, ep in by_port.items()}
        assert await scraper.scrape(by_port[str(b)]), (
            f"endpoint B's scrape of the pool's TLS listener {a} failed: sent as "
            f"{targets[str(b)]} while A's is {targets[str(a)]}"
        )
    finally:
        await scraper.stop()
        await a_runner.cleanup()
        await b_runner.cleanup()
