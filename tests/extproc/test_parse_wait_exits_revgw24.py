"""Review s24-rev-gw24 ("Checked and fine": coverage, passes before and after fixgw24): ``kvgate epp``'s
exits while a big body waits for / runs on the parse thread
(``Session.parse_pending``): the stream cancelled by Envoy while queued gives its bytes back and leaves the
lane; a big body with trailers under flow control is answered in order. Real gRPC on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.conftest import until
from gateway.held_parse import hold_parse, tagged
from kvgate.extproc import keys
from kvgate.extproc import session as session_module
from kvgate.extproc.testing import Exchange
from kvgate.httpfront import offload

ADDRS = ["127.0.0.1:28001", "127.0.0.1:28002"]
HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}


def _big(model: str = "m") -> bytes:
    return orjson.dumps({"model": model, "max_tokens": 4, "prompt": ["word"] * 30_000})


async def test_a_stream_cancelled_while_its_body_waits_for_the_thread_gives_its_bytes_back(
    start_epp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    epp = await start_epp(ADDRS)
    budget = epp.server.ctx.budget
    hp = hold_parse(monkeypatch, session_module, tagged("slow"))
    slow = _big("slow")

    async def send(body: bytes) -> Any:
        async with Exchange(epp.stub) as ex:
            return await ex.send_request(HEADERS, body)

    holder = asyncio.create_task(send(slow))
    try:
        await until(hp.entered.is_set, what="the first parse held")
        ex = Exchange(epp.stub)
        await ex.__aenter__()
        waiter = asyncio.create_task(ex.send_request(HEADERS, _big()))
        lane = offload._lanes[asyncio.get_running_loop()]
        await until(lambda: len(lane) == 1, what="the second body queued")
        assert budget.used == len(slow) + len(_big())
        ex.cancel()  # (Envoy: the downstream client left)
        await asyncio.gather(waiter, return_exceptions=True)
        await until(lambda: budget.used == len(slow), what="the cancelled body's bytes given back")
        await until(lambda: lane.dead == 1 or len(lane) == 0, what="its lane entry dropped")
        await ex.close()
    finally:
        hp.release.set()
        out = await holder
    assert out.destination in ADDRS
    await until(lambda: budget.used == 0, what="all bytes given back")


async def test_a_big_body_with_trailers_under_flow_control_is_answered_in_order(
    start_epp: Any,
) -> None:
    epp = await start_epp(ADDRS)
    ctx = epp.server.ctx
    gate = asyncio.Event()
    admitted: list[str] = []

    async def admit(req: Any) -> Any:
        await gate.wait()
        admitted.append(req.model)
        return ctx.director.pick(req)

    ctx.admit = admit
    big = _big()
    async with Exchange(epp.stub) as ex:
        task = asyncio.create_task(
            ex.send_request({**HEADERS, keys.FAIRNESS_ID: "t"}, big, trailers={"x-t": "1"})
        )
        await until(lambda: ctx.budget.used == 0 and not task.done(), what="parsed, waiting in flow control")
        gate.set()
        out = await task  # (the harness checks headers, body chunks, then trailers)
    assert out.immediate is None and out.destination in ADDRS and out.body == big
    assert admitted == ["m"]
