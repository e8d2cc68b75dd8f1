"""``kvgate epp``'s parse lane names a client as flow control does (``flow_of``: the GIE fairness header
unless absent or "default-flow", else llm-d's; review s24-rev-gw24 F5). Two tenants send the GIE header as
"default-flow" and their own llm-d id: one flow each in flow control, so two clients on the lane; the other
tenant's body is parsed right after the slow parse in progress, before the first tenant's queued ones.
FAILS on main b10fb7c4: the lane took "default-flow" for both, one client, so the body waited for both
queued slow parses (their holds ran out). Real gRPC on loopback; no timing assert (``held_parse``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.conftest import until
from gateway.held_parse import hold_parse, tagged
from kvgate.extproc import keys
from kvgate.extproc import session as session_module
from kvgate.extproc.testing import Exchange, RequestOutcome
from kvgate.httpfront import offload
from kvgate.openai.protocol import LLMD_FAIRNESS_ID

ADDRS = ["127.0.0.1:28011", "127.0.0.1:28012"]
HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}


def _big(model: str = "m") -> bytes:
    """~240 KB of many strings: parsed on the thread (``offload.worth_the_thread``)."""
    return orjson.dumps({"model": model, "max_tokens": 4, "prompt": ["word"] * 30_000})


async def _send(epp: Any, body: bytes, tenant: str) -> RequestOutcome:
    headers = {**HEADERS, keys.FAIRNESS_ID: keys.DEFAULT_FAIRNESS_ID, LLMD_FAIRNESS_ID: tenant}
    async with Exchange(epp.stub) as ex:
        return await ex.send_request(headers, body)


async def test_llmd_tenants_under_an_explicit_default_flow_take_turns(
    start_epp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    epp = await start_epp(ADDRS)
    hp = hold_parse(monkeypatch, session_module, tagged("slow"))
    slows = [asyncio.create_task(_send(epp, _big("slow"), "hostile"))]
    try:
        await until(hp.entered.is_set, what="the first slow parse started")
        slows += [asyncio.create_task(_send(epp, _big("slow"), "hostile")) for _ in range(2)]
        lane = offload._lanes[asyncio.get_running_loop()]
        await until(lambda: len(lane) == 2, what="the tenant's other slow bodies queued")
        honest = asyncio.create_task(_send(epp, _big(), "other"))
        await until(lambda: len(lane) == 3, what="the other tenant's body queued")
        hp.let_one()
        out = await honest
        assert out.immediate is None and out.destination in ADDRS
        # FAILS on main b10fb7c4: [False, True, True] (one client: the two slow ones went first)
        assert hp.held_out == [False], hp.held_out
    finally:
        hp.release.set()
        await asyncio.gather(*slows)
