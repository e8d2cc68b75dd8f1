"""s24-rev-fix24a F5 (L): a follow-up sent with ``store: false`` is kept as a turn (``follow_up`` sets a
``Conversation`` for any follow-up, and ``_keep_turn`` keeps whatever has one), though vLLM 0.32 stores
neither its messages nor its response (serving.py:534-535 and the ``if request.store`` before
``response_store``): a follow-up naming it is vLLM's 404, and the entry only pushes a usable one out of
the LRU."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore


@pytest.mark.asyncio
async def test_a_follow_up_that_does_not_store_is_not_kept() -> None:
    async with serving(ResponsesStore("s0")) as (store,):
        cfg = make_config([store.address], policy="kvgate")
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            assert gw.proxy is not None
            url = base_url(gw) + "/v1/responses"
            async with s.post(url, data=orjson.dumps({"model": "m", "input": "one"})) as r:
                first = await r.json()
            assert len(gw.proxy.turns) == 1
            body = {"model": "m", "input": "two", "previous_response_id": first["id"], "store": False}
            async with s.post(url, data=orjson.dumps(body)) as r:
                second = await r.json()
            assert gw.proxy.turns.get(second["id"]) is None
