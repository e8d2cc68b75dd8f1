"""rev-prev24 F8: a Responses turn is kept for its follow-up only when its answer came whole (vLLM stores a
streamed response at its end: serving.py's ``if request.store`` after the last event; a cut one is never
stored, so a follow-up naming it is vLLM's 404). ``kvgate serve``'s guards on ``ok`` (the JSON relay's and
the stream relay's) had no test: dropping them passed every test."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore


async def _until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + 5.0  # (polled: no sleep-and-hope)
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_cut_answer_is_not_kept_a_whole_one_is(stream: bool) -> None:
    async with serving(ResponsesStore("s0")) as (store,):
        cfg = make_config([store.address], policy="kvgate")
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
            assert gw.proxy is not None
            gw.proxy.whole_max = 64  # (a JSON answer past it is relayed as it comes: its id read first)
            url = base_url(gw) + "/v1/responses"
            body = orjson.dumps({"model": "m", "instructions": "i " * 200, "input": "q", "stream": stream})
            async with s.post(url, data=body) as r:
                assert r.status == 200
                await r.read()
            await _until(lambda: len(gw.proxy.turns) == 1, "the whole answer's turn kept")
            store.cut = True
            # (a JSON body is cut for the client too; a stream ends with an error event)
            with contextlib.suppress(aiohttp.ClientError):
                async with s.post(url, data=body) as r:
                    assert r.status == 200
                    await r.read()
            await _until(lambda: len(store.made) == 2 and not gw.proxy.streams, "the cut answer ended")
            for ep in gw.pools[0].endpoints():
                await _until(lambda ep=ep: ep.inflight.requests == 0, "the cut request released")
            assert store.made[1] in gw.proxy.responses._homes  # (its id was read: the guard decides)
            assert len(gw.proxy.turns) == 1 and gw.proxy.turns.get(store.made[1]) is None
