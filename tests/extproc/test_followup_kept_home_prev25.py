"""``kvgate epp``: a Responses follow-up whose id's home the EPP's map lost (displaced by newer ids while
its turn stays in the turns' LRU) is still pinned to the endpoint that made it (its kept turn's
``home``), not placed by its chain as a score (prev25). Over real gRPC with the Envoy-side test client."""

from __future__ import annotations

import orjson

from kvgate.extproc.testing import Exchange
from kvgate.openai.responses import ResponseHomes

from .conftest import StartEpp

PODS = ["10.0.0.1:8000", "10.0.0.2:8000"]
RESPONSES = {":method": "POST", ":path": "/v1/responses", "content-type": "application/json"}
JSON = {"content-type": "application/json"}
LONG = "You are a careful assistant. " * 40


def _answer(rid: str) -> list[bytes]:
    usage = b'{"input_tokens": 300, "output_tokens": 50, "total_tokens": 350}'
    return [b'{"id": "%s", "object": "response", "usage": %s}' % (rid.encode(), usage)]


async def test_a_follow_up_whose_home_was_lost_is_pinned_to_its_kept_turns_home(start_epp: StartEpp) -> None:
    epp = await start_epp(PODS, policy="kvgate")
    async with Exchange(epp.stub, timeout=10) as ex:
        await ex.send_request(RESPONSES, orjson.dumps({"model": "m", "input": LONG}))
        await ex.send_response(200, JSON, _answer("resp_1"))
    home = epp.picker.calls.dispatched[-1][1]
    ctx = epp.server.ctx
    assert ctx.responses.home("resp_1") == home
    ctx.responses = ResponseHomes()  # (the map lost it; the turn is kept)
    body = orjson.dumps({"model": "m", "input": "and then?", "previous_response_id": "resp_1"})
    async with Exchange(epp.stub, timeout=10) as ex:
        await ex.send_request(RESPONSES, body)
        await ex.send_response(200, JSON, _answer("resp_2"))
    second = epp.picker.calls.requests[-1]
    assert second.subset == frozenset((home,))  # (main: None, the chain a score among the others)
    kept = ctx.turns.get("resp_1")
    assert kept is not None and kept.home == home
