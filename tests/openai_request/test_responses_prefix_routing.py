"""#16 through ``kvgate serve`` (the ``kvgate`` policy, two Responses stores): a Responses body's
``instructions`` are prefix text, so requests sharing them go where the first one went; and a
``previous_response_id`` follow-up still goes to the server that made its response (vLLM keeps it there:
anywhere else is a 404), even when its instructions' prefix is held by the other server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore

LONG_A = "You are the billing agent; answer from the ledger only. " * 40
LONG_B = "You are the travel agent; answer from the itinerary only. " * 40


@pytest.fixture
async def stores() -> AsyncIterator[list[ResponsesStore]]:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as started:
        yield started


async def _post(s: aiohttp.ClientSession, url: str, body: dict[str, object]) -> str:
    async with s.post(url, data=orjson.dumps({"model": "m", **body})) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["id"])


def _home(rid: str) -> str:
    return rid.split("_")[1]  # (``resp_<store>_<n>``)


async def test_shared_instructions_follow_their_prefix_and_a_follow_up_its_home(
    stores: list[ResponsesStore],
) -> None:
    cfg = make_config([st.address for st in stores], policy="kvgate")
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/responses"
        homes: dict[str, list[str]] = {"a": [], "b": []}
        for i in range(6):
            for name, text in (("a", LONG_A), ("b", LONG_B)):
                homes[name].append(_home(await _post(s, url, {"instructions": text, "input": f"q{i}"})))
        # Each agent's requests went where its first went (its instructions' blocks are held there).
        assert len(set(homes["a"])) == 1 and len(set(homes["b"])) == 1, homes
        # A follow-up naming a response made on the other server goes there, not to its prefix's holder
        # (a response made there directly, its home told to the gateway as an answer passing would).
        other = next(st for st in stores if st.name != homes["a"][0])
        rid = await _post(s, f"http://{other.address}/v1/responses", {"input": "elsewhere"})
        assert gw.proxy is not None
        gw.proxy.responses.remember(rid, other.address)
        follow = await _post(s, url, {"instructions": LONG_A, "input": "more", "previous_response_id": rid})
        assert _home(follow) == other.name and other.followed == [rid]
