"""Session 29 (shape29): the rule "a source port that is one of the pool's endpoints' own ports is that
endpoint's TLS listener" (review s28-rev-d28 F1) lives in ``scrape_source.resolve``, beside fixcfg28b's
"the endpoint's own port" rule, not in ``MetricsScraper.target`` as a rewrite of the port it passes.
Fails on bb983a9c (``resolve`` takes no ``pool_ports``)."""

from __future__ import annotations

import ssl

from kvgate.datalayer.scrape_source import ScrapeSource, resolve


class _Unasked:
    def __contains__(self, port: object) -> bool:
        raise AssertionError(f"the pool's ports were asked for {port}")


def test_a_source_port_of_another_endpoint_of_the_pool_is_https_for_every_endpoint() -> None:
    tls = ssl.create_default_context()
    src = ScrapeSource(scheme="http", port=8000)
    r = resolve(src, "https", tls, "/metrics", 8443, pool_ports={8443, 8000})  # another endpoint's port
    assert (r.scheme, r.scheme_overridden, r.tls) == ("https", True, tls)
    r = resolve(src, "https", tls, "/metrics", 8443, pool_ports={8443})  # another listener: its http stands
    assert (r.scheme, r.scheme_overridden) == ("http", False)


def test_the_pools_ports_are_asked_only_where_they_decide() -> None:
    tls = ssl.create_default_context()
    unasked = _Unasked()
    for src, scheme, expected in [
        (ScrapeSource(scheme="http"), "https", "https"),  # no port named: the endpoint's own
        (ScrapeSource(scheme="http", port=8443), "https", "https"),  # the endpoint's own port named
        (ScrapeSource(scheme="https", port=8000), "https", "https"),  # not http
        (ScrapeSource(scheme="http", port=8000), "http", "http"),  # an http scraper: nothing to override
    ]:
        assert resolve(src, scheme, tls, "/metrics", 8443, pool_ports=unasked).scheme == expected, src
