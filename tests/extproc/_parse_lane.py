"""What ``kvgate epp``'s parse-lane tests share (``test_parse_off_loop_epp_gw24``,
``test_parse_lane_key_fixgw24``): a big body parsed on the thread, a request sent as Envoy would, and the
scenario "a tenant's slow parses hold the thread, another tenant's body is parsed next"."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from gateway.conftest import until
from gateway.held_parse import hold_parse, tagged
from kvgate.extproc import session as session_module
from kvgate.extproc.testing import Exchange, RequestOutcome
from kvgate.httpfront import offload

HEADERS = {":method": "POST", ":path": "/v1/completions", "content-type": "application/json"}


def big_body(model: str = "m") -> bytes:
    """~240 KB of many strings: parsed on the thread (``offload.worth_the_thread``)."""
    return orjson.dumps({"model": model, "max_tokens": 4, "prompt": ["word"] * 30_000})


async def send(epp: Any, body: bytes, headers: dict[str, str], **kw: Any) -> RequestOutcome:
    async with Exchange(epp.stub) as ex:
        return await ex.send_request(headers, body, **kw)


async def another_tenant_cuts_in(
    epp: Any, monkeypatch: pytest.MonkeyPatch, send_as: Callable[[bytes, str], Awaitable[RequestOutcome]]
) -> tuple[RequestOutcome, list[bool]]:
    """Tenant "hostile"'s slow body's parse held, two more of its slow bodies queued on the lane, then
    tenant "other"'s big body; one slow parse let go. The other's outcome, and each held parse's "its
    hold ran out" as the other's answer came (``[False]``: the other's body was parsed next)."""
    hp = hold_parse(monkeypatch, session_module, tagged("slow"))
    slows = [asyncio.create_task(send_as(big_body("slow"), "hostile"))]
    try:
        await until(hp.entered.is_set, what="the first slow parse started")
        slows += [asyncio.create_task(send_as(big_body("slow"), "hostile")) for _ in range(2)]
        lane = offload._lanes[asyncio.get_running_loop()]
        await until(lambda: len(lane) == 2, what="the tenant's other slow bodies queued")
        honest = asyncio.create_task(send_as(big_body(), "other"))
        await until(lambda: len(lane) == 3, what="the other tenant's body queued")
        hp.let_one()
        out = await honest
        return out, list(hp.held_out)
    finally:
        hp.release.set()
        await asyncio.gather(*slows)
