"""rev-fixgw25 F1: fixgw25 dropped the share's first-body exemption ("no exemption under pressure") and takes
"pressure" to be the waiting bytes *this body included*. So one lone body over half of maxBufferedBytes, with
nothing else waiting, is "under pressure", and past the share (or past limit - share) it gets 429 with
Retry-After, for its size alone, on every retry, for ever. The config allows maxBufferedBytes ==
maxBodyBytes (config refuses only budget < body), so any body > budget/2 is such a body. Passes on a7dbe3b2
(first body always goes); fails on f2e12c1f (429)."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from gateway.conftest import base_url, make_config, running_gateway

BUDGET = 8 << 20


async def test_a_lone_body_over_half_the_budget_is_not_refused(backends: Any) -> None:
    (backend,) = await backends(1)
    turn = {"role": "user", "content": "word " * 50}
    body = orjson.dumps({"model": "m", "max_tokens": 4, "messages": [turn] * 19_000})  # (~5.5 MiB)
    assert BUDGET // 2 < len(body) < BUDGET, len(body)
    cfg = make_config(
        [backend.address], extra={"limits": {"maxBufferedBytes": BUDGET, "maxBodyBytes": BUDGET}}
    )
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/chat/completions"
        for _ in range(3):  # (the 429 says retry: a retry is refused alike)
            async with s.post(url, data=body, headers={"content-type": "application/json"}) as r:
                text = await r.text()
                # (forwarded: the test backend's aiohttp answers 413 past its 1 MiB client_max_size, which
                # shows the gateway passed it on; the gateway's own refusal is the 429)
                assert r.status != 429, (r.status, r.headers.get("retry-after"), text[:300])
                assert len(backend.received) or r.status == 413


async def test_off_loop_alone_refuses_nothing() -> None:
    """The same at ``off_loop``: an empty lane, one body of 0.6 of the limit."""
    from kvgate.httpfront.offload import off_loop

    limit = 1000
    try:
        got = await off_loop(len, b"x" * 600, "c", limit // 4, limit)
    except TypeError:  # (a7dbe3b2: no ``limit`` argument; its first body always went)
        got = await off_loop(len, b"x" * 600, "c", limit // 4)
    assert got == 600
