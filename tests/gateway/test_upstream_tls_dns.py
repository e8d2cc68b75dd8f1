"""Issue #12, expected by users: endpoints by DNS name, and https upstreams with CA verification
(serving, scraping and probing)."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway
from gateway.test_health_gate import wait_until
from kvgate.config.gateway import GatewayConfigError
from kvgate.extproc.tls import self_signed

BODY = b'{"model":"m","prompt":"x","max_tokens":1}'


def test_dns_names_and_https_endpoints_are_accepted_and_mixed_schemes_refused(tmp_path):
    cfg = make_config(["http://vllm-0.vllm.default.svc:8000", "vllm-1.vllm:8000"])
    assert cfg.pools[0].endpoints == ["vllm-0.vllm.default.svc:8000", "vllm-1.vllm:8000"]
    assert cfg.pools[0].scheme == "http"
    cfg = make_config(["https://vllm-0.vllm:8443"])
    assert cfg.pools[0].scheme == "https" and cfg.pools[0].endpoints == ["vllm-0.vllm:8443"]
    for bad in (["http://a:1", "https://b:1"], ["under_score.example:80"], ["-bad.example:80"]):
        with pytest.raises(GatewayConfigError):
            make_config(bad)


async def test_https_upstream_verified_against_the_ca_file_and_refused_without_it(tmp_path):
    pair = self_signed(("localhost",))
    (tmp_path / "ca.pem").write_bytes(pair.cert_pem)
    (tmp_path / "key.pem").write_bytes(pair.key_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "ca.pem", tmp_path / "key.pem")
    b = await Backend("tls").start(ssl_context=server_ctx)
    try:
        address = f"https://localhost:{b.port}"  # by name: resolved, and the name is verified
        cfg = make_config([address])
        cfg.pools[0].ca_file = str(tmp_path / "ca.pem")
        async with running_gateway(cfg, scrape=True) as gw, aiohttp.ClientSession() as s:
            async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
                assert r.status == 200, await r.text()
            ep = gw.pools[0].endpoints()[0]
            await wait_until(lambda: ep.metrics.updated_at is not None)  # scrapes run over https
            assert await gw.health.probe(gw.session, ep)  # so do the health probes
        # Without the CA (system CAs only) the self-signed server is not trusted: no request reaches it.
        before = len(b.received)
        async with (
            running_gateway(make_config([address])) as gw,
            aiohttp.ClientSession() as s,
            s.post(base_url(gw) + "/v1/completions", data=BODY) as r,
        ):
            assert r.status == 503
        assert len(b.received) == before
    finally:
        await b.stop()


def test_ca_file_key_is_read_relative_to_the_config(tmp_path):
    from kvgate.config.gateway import parse_gateway_config

    (tmp_path / "ca.pem").write_text("x")
    raw = {"pools": [{"name": "p", "endpoints": ["https://h:1"], "models": ["m"], "caFile": "ca.pem"}]}
    assert parse_gateway_config(raw, base_dir=str(tmp_path)).pools[0].ca_file == str(tmp_path / "ca.pem")
    raw["pools"][0]["caFile"] = "missing.pem"
    with pytest.raises(GatewayConfigError) as e:
        parse_gateway_config(raw, base_dir=str(tmp_path))
    assert e.value.key == "pools[0].caFile"
