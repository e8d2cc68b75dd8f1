"""Review s28-rev-d28 F1 (L): fixcfg28b's port rule (75478861) decides "the endpoint's own port" per
endpoint. In an https pool whose ``metrics-data-source`` says ``{scheme: http, port: A}`` where ``A`` is the
port of one of the pool's own (TLS) endpoints, the endpoint on ``A`` is scraped over https, but a second
endpoint of the same host (``B``) is sent to the same TLS listener ``A`` over plain http: every scrape of
it fails. On 75478861^ both read ``A`` over https. Both servers bind port 0 and are read back; the scrape
timeout is 30 s; no timing window."""

from __future__ import annotations

from pathlib import Path

from kvgate.datalayer.store import EndpointStore, make_endpoint

from ._scrape_tls import https_pool_scraper, metrics_server, self_signed_files, server_context


async def test_a_source_port_that_is_another_endpoints_tls_port_is_scraped_over_https(tmp_path: Path) -> None:
    cert, key = self_signed_files(tmp_path)
    server_tls = server_context(cert, key)
    a_runner, a = await metrics_server(server_tls, ("/metrics",))  # the pool's endpoint A (TLS), its metrics
    b_runner, b = await metrics_server(server_tls, ("/metrics",))  # the pool's endpoint B (TLS), same host
    store = EndpointStore([make_endpoint(f"127.0.0.1:{a}"), make_endpoint(f"127.0.0.1:{b}")])
    scraper = https_pool_scraper(store, f"{{scheme: http, port: {a}, path: /metrics}}", cert)
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
