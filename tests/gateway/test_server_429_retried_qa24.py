"""qa24 F1: a model server's own 429 (at capacity: it ran nothing) is retried on another endpoint while
attempts are left, as its 503 is, but not charged a failure (review s24-rev-fixqa24 R1: busy is not
broken; a saturated pool must not eject its servers). Before, it was passed to the client although another
endpoint was idle: two endpoints, round robin, ``maxAttempts: 3`` answered ``[429, 200, 429, 200, 429,
200]``. When every attempt gets a 429, the last one reaches the client with its ``Retry-After``. Real HTTP
on loopback: ``gateway.backend.Backend`` servers behind a real ``GatewayServer``."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway


@pytest.mark.parametrize("stream", [False, True])
async def test_a_servers_429_is_retried_on_an_idle_endpoint(stream: bool) -> None:
    full, idle = await Backend("full").start(), await Backend("idle").start()
    try:
        full.mode = "error429"
        cfg = make_config([full.address, idle.address], extra={"limits": {"maxAttempts": 3}})
        statuses = []
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            for i in range(6):
                body = {"model": "m", "prompt": f"q{i}", "max_tokens": 2, "stream": stream}
                async with s.post(base_url(gw) + "/v1/completions", json=body) as r:
                    await r.read()
                    statuses.append(r.status)
            retries = gw.metrics.registry.get_sample_value("kvgate_gateway_retries_total")
        assert full.received, "the 429ing endpoint was never tried: the test proves nothing"
        assert statuses == [200] * 6, statuses
        assert retries == len(full.received)  # each 429 retried once, counted
    finally:
        await full.stop()
        await idle.stop()


async def test_every_attempt_429_passes_the_last_and_charges_no_endpoint() -> None:
    bs = [await Backend(f"b{i}").start() for i in range(2)]
    try:
        for b in bs:
            b.mode, b.error_headers = "error429", {"Retry-After": "7"}
        cfg = make_config([b.address for b in bs], extra={"limits": {"maxAttempts": 3}})
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            body = {"model": "m", "prompt": "x", "max_tokens": 2}
            async with s.post(base_url(gw) + "/v1/completions", json=body) as r:
                await r.read()
                status, after = r.status, r.headers.get("Retry-After")
            failures = {a: st.failures for a, st in gw.health._state.items()}
        assert (status, after) == (429, "7")
        assert [len(b.received) for b in bs] == [1, 1]  # one each: nowhere else to go after the second
        assert not any(failures.values()), failures
    finally:
        for b in bs:
            await b.stop()
