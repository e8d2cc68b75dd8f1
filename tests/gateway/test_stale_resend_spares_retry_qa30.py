"""qa30 Q5 (L): with ``maxAttempts: 2`` ("tries on different endpoints", docs/gateway.md's config
comment), an endpoint that resets every request it reads spends both tries of a request that reached it
on a kept-alive connection: the first reset is taken for the keep-alive race (``StaleConnection``) and
resent to the same endpoint on a new connection (an attempt of its own since qa24 F2), which resets too;
the client gets ``503 all 2 attempts failed`` while the other endpoint is idle and was never tried.

Fails on main 6d96a979: one request of the six is 503 before the resetting endpoint is ejected."""

from __future__ import annotations

import aiohttp

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway

BODY = b'{"model":"m","prompt":"x","max_tokens":2}'


async def test_a_resetting_endpoint_does_not_spend_a_two_attempt_budget_on_itself():
    bad, good = await Backend("bad").start(), await Backend("good").start()
    # (round-robin; the probe far beyond the test once it is ejected)
    cfg = make_config(
        [bad.address, good.address],
        extra={"limits": {"maxAttempts": 2}, "health": {"ejectBaseSeconds": 300, "ejectMaxSeconds": 300}},
    )
    try:
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            url = base_url(gw) + "/v1/completions"
            for _ in range(4):  # both endpoints answered: their connections are kept alive, used
                async with s.post(url, data=BODY) as r:
                    assert r.status == 200
            assert len(bad.received) >= 1
            bad.mode = "drop"  # it now reads each request and resets the connection
            statuses = []
            for _ in range(6):
                async with s.post(url, data=BODY) as r:
                    statuses.append((r.status, (await r.read())[:120]))
            assert all(st == 200 for st, _ in statuses), statuses
    finally:
        await bad.stop()
        await good.stop()
