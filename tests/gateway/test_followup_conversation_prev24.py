"""``kvgate serve``: a Responses follow-up (``previous_response_id``) is estimated and prefix-scored as the
conversation the server prefills, not as its new input alone (#16; keys23's design, prev24).

A follow-up sends only its new input and the earlier response's id; vLLM (``store``) prefills the whole
conversation. Before prev24 the request model read the new input only: the earlier turn's tokens were
missing from the estimate and the follow-up's blocks matched nothing in the prefix index, so with its home
unknown it was placed as a stranger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.openai.request import RESPONSES, parse_body
from kvgate.openai.responses import ResponseHomes

# A first turn long enough for many prefix blocks (64 characters each at the default 16-token block).
LONG = "You are a careful assistant. " * 40  # 1,160 characters


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as started:
        yield started


def _spy(gw: Any) -> list[Any]:
    """The requests the pool's director dispatches, in order (the real director still does the work)."""
    director = gw.proxy.pools[0].director
    seen: list[Any] = []
    real = director.on_dispatched

    def on_dispatched(ireq: Any, ep: Any) -> None:
        seen.append(ireq)
        real(ireq, ep)

    director.on_dispatched = on_dispatched
    return seen


async def _post(s: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with s.post(url, data=orjson.dumps(body)) as r:
        assert r.status == 200, await r.text()
        raw = await r.read()
    if body.get("stream"):
        return str(orjson.loads(raw.split(b"\n\n")[0].split(b"data: ", 1)[1])["response"]["id"])
    return str(orjson.loads(raw)["id"])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_follow_up_is_estimated_as_the_whole_conversation(
    stores: list[ResponsesStore], stream: bool
) -> None:
    a, b = stores
    cfg = make_config([a.address, b.address], policy="kvgate")
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        seen = _spy(gw)
        url = base_url(gw) + "/v1/responses"
        rid = await _post(s, url, {"model": "m", "input": LONG, "stream": stream})
        first = seen[-1]
        second_body = {"model": "m", "input": "and then?", "previous_response_id": rid, "stream": stream}
        rid2 = await _post(s, url, second_body)
        second = seen[-1]
        own = parse_body(RESPONSES, orjson.dumps(second_body)).prompt_tokens
        # The store's usage for the first turn: 3 input + 1 output tokens (``ResponsesStore``).
        assert second.prompt_tokens == own + 4
        # The follow-up's blocks continue the first turn's: they start with its whole chain.
        chain1 = list(first.conversation.chain)
        assert len(chain1) >= 15 and list(second.conversation.chain)[: len(chain1)] == chain1
        # A third turn continues the second's (whose usage the store says: 3 + 1 again).
        await _post(s, url, {"model": "m", "input": "more", "previous_response_id": rid2, "stream": stream})
        third = seen[-1]
        assert list(third.conversation.head) == list(second.conversation.chain)
        assert third.prompt_tokens > 4


async def test_a_follow_up_whose_home_is_unknown_goes_to_the_holder_of_its_conversation(
    stores: list[ResponsesStore],
) -> None:
    """With the home's entry gone (here: the homes forgotten), the prefix scorer still places the follow-up
    with the endpoint holding its conversation, which holds the stored response: no 404."""
    a, b = stores
    cfg = make_config([a.address, b.address], policy="kvgate")
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/responses"
        # First turns until both endpoints hold conversations: with no load, ties between the two endpoints
        # are broken at random, so a fixed count could put them all on one (seen 1 run in ~10).
        ids: list[str] = []
        while len(ids) < 6 or not (a.made and b.made):
            assert len(ids) < 64, "64 first turns all went to one endpoint"
            ids.append(await _post(s, url, {"model": "m", "input": f"{len(ids)} {LONG}"}))
        gw.proxy.responses = ResponseHomes()
        for rid in ids:
            async with s.post(
                url, data=orjson.dumps({"model": "m", "input": "next?", "previous_response_id": rid})
            ) as r:
                assert r.status == 200, await r.text()
