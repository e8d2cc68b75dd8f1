"""Session-24 closing note (review s24-rev-fix24b F5): after one server's 500 (the suspect), another's 429
(busy: it ran nothing) is no verdict on the request, so it must neither charge nor clear the suspect: each
server's health is charged for its own answer only. Before, ``_blame`` charged the first server at the 429,
so a request that two servers answered 500 (the request's fault) charged both. Real HTTP on loopback:
``gateway.backend.Backend`` servers behind a real in-process ``GatewayServer``."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.backend import Backend
from gateway.conftest import base_url, make_config, running_gateway
from kvgate.gateway.server import GatewayServer

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1})


def _failures(gw: GatewayServer, address: str) -> int:
    st = gw.health._state.get(address)
    return st.failures if st is not None else 0


def _answer_in_turn(bs: list[Backend], statuses: list[int]) -> list[Backend]:
    """The n-th attempt, on whichever backend the pick chose, answers ``statuses[n]`` (200: a normal
    answer); the list returned gets the backends in the order they were tried."""
    order: list[Backend] = []

    def misbehave(b: Backend) -> Any:
        async def answer(request: web.Request) -> web.StreamResponse | None:
            order.append(b)
            status = statuses[len(order) - 1]
            if status == 200:
                return None  # (the backend's normal completion)
            headers = {"Retry-After": "1"} if status == 429 else None
            error = {"error": {"message": "x", "code": status}}
            return web.json_response(error, status=status, headers=headers)

        return answer

    for b in bs:
        b._misbehave = misbehave(b)  # type: ignore[method-assign]
    return order


async def _run(backends: Any, statuses: list[int]) -> tuple[int, list[int]]:
    bs = await backends(len(statuses))
    order = _answer_in_turn(bs, statuses)
    cfg = make_config([b.address for b in bs], extra={"limits": {"maxAttempts": len(statuses)}})
    async with running_gateway(cfg) as gw:
        async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            await r.read()
            status = r.status
        assert len({id(b) for b in order}) == len(statuses) == len(order)  # (each tried once, in turn)
        return status, [_failures(gw, b.address) for b in order]


async def test_a_429_between_two_500s_charges_neither_500(backends):
    """500, 429, 500: two servers ran the request and both failed on it (a query of death): neither is
    charged, nor the busy one. Before: the first charged at the 429, the last's 500 then had no suspect
    before it and was charged too ([1, 0, 1])."""
    status, failures = await _run(backends, [500, 429, 500])
    assert status == 500
    assert failures == [0, 0, 0], failures


async def test_a_500_then_a_429_then_an_answer_charges_the_500(backends):
    """500, 429, 200: the third server answered, so the first's 500 was its own: charged once."""
    status, failures = await _run(backends, [500, 429, 200])
    assert status == 200
    assert failures == [1, 0, 0], failures


async def test_a_500_then_a_last_429_charges_the_500(backends):
    """500, then a 429 passed back (no attempt left): nobody else ran it, the 500 stands alone and is
    charged, as a 500 with nowhere else to go; the busy server is not."""
    status, failures = await _run(backends, [500, 429])
    assert status == 429
    assert failures == [1, 0], failures
