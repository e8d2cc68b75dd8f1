"""rev-gw25 F2 (kvgate serve): the share is per peer host, and on by default (0 means a quarter, there is no
"off"). Users behind one NAT, or every client of a gateway behind an ingress / L7 load balancer (one peer
host), are one client: a second user's big body gets 429 while another's parse runs, with three quarters of
``maxBufferedBytes`` free. Passes on e7cc9e9d (held, then 200); fails on gw25 (429)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway, until
from gateway.held_parse import from_host, hold_parse, post, tagged
from kvgate.gateway import proxy as proxy_module

BUDGET = 6 << 20


async def test_two_users_behind_one_host_both_get_through_while_the_budget_has_room(
    backends: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (backend,) = await backends(1)
    hp = hold_parse(monkeypatch, proxy_module, tagged("slow"))
    turn = {"role": "user", "content": "word " * 50}
    one = orjson.dumps({"model": "slow", "max_tokens": 4, "messages": [turn] * 3_000})  # (~0.9 MB)
    two = orjson.dumps({"model": "m", "max_tokens": 4, "messages": [turn] * 3_000})
    cfg = make_config(
        [backend.address], extra={"limits": {"maxBufferedBytes": BUDGET, "maxBodyBytes": 2 << 20}}
    )
    async with running_gateway(cfg) as gw, from_host("127.0.0.2") as nat:
        url = base_url(gw) + "/v1/chat/completions"
        proxy = gw.proxy
        assert proxy is not None
        first = asyncio.create_task(post(nat, url, one))
        try:
            await until(hp.entered.is_set, what="user 1's parse started")
            second = asyncio.create_task(post(nat, url, two))
            await until(lambda: second.done() or proxy.inflight == 2, what="user 2's body queued")
            early = second.result() if second.done() else None
            assert early is None, early  # gw25: 429 (2 x 0.9 MB > 1.5 MiB share, 6 MiB budget free)
        finally:
            hp.release.set()
            await asyncio.gather(first, return_exceptions=True)
        assert await second == 200
