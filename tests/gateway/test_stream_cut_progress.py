"""Review s19-fixes-a M1 (on f1118cf, ``_charge_cut``): a stream cut by requestTimeoutSeconds is spared the
charge only for progress in the later half of its hold, a data event after its first one, not any byte.
A wedged engine that keeps its connection warm (SSE comment pings, as many OpenAI-compatible servers and
proxies send) or whose first token came in the later half of the bound (a long queue) and nothing after
it is charged and ejected (before the fix: never, so every request sent to it waited the whole bound).
A steady stream cut by the bound is still not charged (``test_stream_deadline_cut.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.sse_upstream import Staller, read_request
from kvgate.gateway.server import GatewayServer

BOUND = 1.0

_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


_FIRST = _chunk(
    b'data: {"id":"c","object":"text_completion","model":"m","choices":[{"index":0,"text":"a",'
    b'"finish_reason":null}]}\n\n'
)


class Pinger(Staller):
    """A stream's head and one token, then only ``: ping`` comments every 0.2 s: an engine wedged after
    its first token behind a keep-alive ticker."""

    def __init__(self) -> None:
        super().__init__(0, b"")

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.append(w)
        try:
            await read_request(r)
            self.requests += 1
            w.write(_HEAD + _FIRST)
            while True:
                await asyncio.sleep(0.2)
                w.write(_chunk(b": ping\n\n"))
                await w.drain()
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass


class LateFirstToken(Staller):
    """A stream's head and first token only after 0.6 of the bound (a long queue), then nothing (wedged)."""

    def __init__(self) -> None:
        super().__init__(0, b"")

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.append(w)
        try:
            await read_request(r)
            self.requests += 1
            await asyncio.sleep(0.6 * BOUND)
            w.write(_HEAD + _FIRST)
            await w.drain()
            await asyncio.sleep(3600)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass


def _config(addresses: list[str]) -> Any:
    return make_config(
        addresses,
        extra={
            "limits": {"requestTimeoutSeconds": BOUND, "idleTimeoutSeconds": 30},
            "health": {
                "ejectAfterFailures": 3,
                "ejectBaseSeconds": 30,
                "ejectMaxSeconds": 30,
            },
        },
    )


async def _stream(gw: GatewayServer, prompt: str) -> tuple[int, bytes]:
    body = orjson.dumps({"model": "m", "prompt": prompt, "stream": True})
    async with (
        aiohttp.ClientSession() as s,
        s.post(base_url(gw) + "/v1/completions", data=body) as r,
    ):
        return r.status, await r.read()


@pytest.mark.parametrize(
    "cls",
    [Pinger, LateFirstToken],
    ids=["pings-after-first-token", "late-first-token-then-silent"],
)
async def test_a_wedged_server_that_keeps_the_connection_warm_is_ejected(backends, cls: Any) -> None:
    """Three 1 s cuts with no progress: 3 failures, 1 ejection (before the fix: 0, 0)."""
    wedged = cls()
    address = await wedged.start()
    (good,) = await backends(1)
    try:
        async with running_gateway(_config([address, good.address])) as gw:
            for i in range(6):  # round-robin: three to each
                status, _ = await asyncio.wait_for(_stream(gw, f"p{i}"), 10)
                assert status == 200
            st = gw.health._state.get(address)
            failures = 0 if st is None else st.failures
            ejections = gw.health.ejections
    finally:
        await wedged.stop()
    assert wedged.requests == 3
    assert (failures, ejections) == (3, 1)
