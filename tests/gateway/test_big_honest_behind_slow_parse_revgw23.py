"""Review s23-rev-gw23 F3: the parse thread is one FIFO for every body over 64 KiB, whoever sent it and
whatever it costs: an honest 100 KB chat body (a ~1 ms parse) waits for every slow parse queued before it
(a hostile 8 MiB ``emptymsg`` body: ~1 s each; at the default ``maxBufferedBytes`` 1 GiB, 128 of them).
Here the slow parse is held (``held_parse``, as gw23's own test holds it); the honest body is not answered
until it is released. FAILS at 83f8785f, on main 470c6a1c (and on 51c4190c); passes since fixgw23: a
body up to 1 MiB of few strings and containers is parsed on the loop (``offload.worth_the_thread``). Real
HTTP on loopback; no timing assert."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.held_parse import hold_parse, post, tagged
from kvgate.gateway import proxy as proxy_module


async def test_an_honest_big_body_is_not_parsed_after_a_slow_one(
    backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (backend,) = await backends(1)
    hp = hold_parse(monkeypatch, proxy_module, tagged("slow"))
    slow = orjson.dumps({"model": "slow", "messages": [{}] * 200_000})  # (another client's, held)
    honest = orjson.dumps(
        {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "w " * 50_000}]}
    )
    async with running_gateway(make_config([backend.address])) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/chat/completions"
        slow_task = asyncio.create_task(post(s, url, slow))
        try:
            await until(hp.entered.is_set, what="the slow parse started")
            assert await post(s, url, honest) == 200
            # FAILS on main 470c6a1c (and at 83f8785f): the honest body's parse came after the slow one's
            # hold ran out
            assert hp.still_held(), hp.held_out
        finally:
            hp.release.set()
            await slow_task
