"""qa24 F2: a non-streamed request is sent at most ``maxAttempts`` times, each send an attempt.

Before, ``UpstreamPool.request`` resent a request once on a new connection whenever it failed before any
answer byte on a pooled connection, and the connections ``warm_upstreams()`` opens at start counted as
pooled: with ``maxAttempts: 1`` a server that read the request and then crashed got it twice, the very
first request included, and ``kvgate_gateway_retries_total`` stayed 0. Now a connection opened ahead has
carried nothing and is not taken for a stale keep-alive one; a truly stale one's resend (same endpoint,
new connection) is an attempt of its own, counted. Real HTTP on loopback (``gateway.backend.Backend``)."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway

BODY = {"model": "m", "prompt": "x"}


async def test_max_attempts_one_sends_a_non_streamed_request_once() -> None:
    b = await Backend("b").start()
    try:
        cfg = make_config([b.address], extra={"limits": {"maxAttempts": 1}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            # No request before this one: only the connections opened ahead at start exist.
            b.mode = "drop"  # reads the request, then aborts the connection (a crash after the read)
            b.received.clear()
            async with s.post(base_url(gw) + "/v1/completions", json=BODY) as r:
                await r.read()
                assert r.status == 503
            retries = gw.metrics.registry.get_sample_value("kvgate_gateway_retries_total")
        assert len(b.received) == 1, f"sent {len(b.received)} times with maxAttempts 1 (retries {retries})"
    finally:
        await b.stop()


@pytest.mark.parametrize("attempts", [1, 2])
async def test_a_used_connection_closed_early_is_resent_as_a_counted_attempt(attempts: int) -> None:
    b = await Backend("b").start()
    try:
        cfg = make_config([b.address], extra={"limits": {"maxAttempts": attempts}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            async with s.post(base_url(gw) + "/v1/completions", json=BODY) as r:
                await r.read()  # a request that leaves its connection kept alive in the pool
                assert r.status == 200
            b.mode = "drop"
            b.received.clear()
            async with s.post(base_url(gw) + "/v1/completions", json=BODY) as r:
                await r.read()
                assert r.status == 503
            retries = gw.metrics.registry.get_sample_value("kvgate_gateway_retries_total")
        # The stale-connection resend (same endpoint, new connection) is the second attempt: counted.
        assert (len(b.received), retries) == (attempts, attempts - 1)
    finally:
        await b.stop()
