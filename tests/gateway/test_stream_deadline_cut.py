"""Review s19-qa L6: an answer relayed as it comes (a stream; a non-streamed body past ``whole_max``) cut by
``requestTimeoutSeconds`` while its server was still sending.

1. The stream's error event named the upstream (``upstream stream from <addr> was cut: ReadTimeout``,
   ``upstream_error``): it was the gateway's own bound. Now it names it, with the 504 ``request_timeout``
   code the gateway gives a request its bound ends.
2. Team decision: such a cut is not charged to the endpoint (before: a failure each, so three long
   generations in a row ejected a healthy server whose chunks never stopped, halving the pool for
   everyone). "Still sending": a piece came from it in the later half of the time it held the request. A
   server silent that long (a wedged engine: after its first chunk, or mid-way) is still charged, as
   session 18's rule says (``HealthTracker.timed_out``; ``tests/gateway/test_relay_deadline_charge.py``
   for the deadlines it did not own)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.conftest import base_url, make_config, running_gateway
from gateway.sse_upstream import Staller, read_request
from kvgate.gateway.server import GatewayServer

BOUND = 1.0  # requestTimeoutSeconds of these tests


def _config(addresses: list[str], bound: float = BOUND) -> Any:
    # (idle timeout far above the bound: only the deadline cuts; ejection after 3 failures)
    return make_config(
        addresses,
        extra={
            "limits": {"requestTimeoutSeconds": bound, "idleTimeoutSeconds": 30},
            "health": {"ejectAfterFailures": 3, "ejectBaseSeconds": 30, "ejectMaxSeconds": 30},
        },
    )


async def _stream(gw: GatewayServer, prompt: str) -> tuple[int, bytes]:
    body = orjson.dumps({"model": "m", "prompt": prompt, "stream": True})
    async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=body) as r:
        return r.status, await r.read()


async def _whole(gw: GatewayServer) -> int:
    body = orjson.dumps({"model": "m", "prompt": "x"})
    async with aiohttp.ClientSession() as s, s.post(base_url(gw) + "/v1/completions", data=body) as r:
        with contextlib.suppress(aiohttp.ClientPayloadError):  # (200, then the body cut)
            await r.read()
        return r.status


def _failures(gw: GatewayServer, address: str) -> int:
    st = gw.health._state.get(address)
    return 0 if st is None else st.failures


async def test_a_stream_cut_by_the_deadline_names_the_bound(backends) -> None:
    """FAILED before: ``upstream stream from 127.0.0.1:PORT was cut: ReadTimeout``, ``upstream_error``."""
    (b,) = await backends(1, tokens=80, chunk_delay=0.05)  # 4 s of steady chunks
    async with running_gateway(_config([b.address])) as gw:
        status, text = await asyncio.wait_for(_stream(gw, "long"), 10)
    assert status == 200
    assert b"[DONE]" not in text
    last = text.strip().rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"data: {"), text[-300:]
    error = orjson.loads(last[len(b"data: ") :])["error"]
    assert error["code"] == "request_timeout", error
    assert "requestTimeoutSeconds (1s)" in error["message"], error
    assert b.address in error["message"]  # (which stream: hideInternalAddresses drops it)


async def test_steady_streams_cut_three_times_eject_nothing(backends) -> None:
    """Two servers, each sending a chunk every 0.05 s for 12 s; three rounds of one stream on each, every
    one cut at a 4 s bound: no endpoint charged, none ejected. FAILED before: each cut a failure, both
    servers at 3 (one ejected: the last healthy one never is). (A 4 s bound, not 1 s: "still sending" means
    a piece in the later half of the bound, and the servers share the test's event loop, so a stall of the
    loop longer than that half, seen at load 13 with a 1 s bound, made a steady server look silent.)"""
    a, b = await backends(2, tokens=240, chunk_delay=0.05)
    async with running_gateway(_config([a.address, b.address], bound=4.0)) as gw:
        for rnd in range(3):
            got = await asyncio.wait_for(asyncio.gather(*(_stream(gw, f"r{rnd}-{i}") for i in range(2))), 30)
            assert all(s == 200 and b'"error"' in t and b"[DONE]" not in t for s, t in got), got
        assert [_failures(gw, x.address) for x in (a, b)] == [0, 0]
        assert gw.health.ejections == 0
        assert all(ep.healthy for pool in gw.pools for ep in pool.endpoints())
    assert len(a.received) == len(b.received) == 3


@pytest.mark.parametrize(
    "silent",
    [
        {"tokens": 4, "chunk_delay": 60.0},  # its first chunk, then nothing
        {"tokens": 40, "chunk_delay": 0.05, "pause_after": 2},  # three chunks, then wedged mid-way
    ],
    ids=["after-first-chunk", "mid-way"],
)
async def test_a_silent_stream_cut_by_the_deadline_is_still_charged(backends, silent: dict[str, Any]) -> None:
    """A wedged engine (silent for the later half of the time it held the request) is still charged for
    the deadline's cut and ejected after three: the session 18 rule this change keeps."""
    silent = dict(silent)
    pause_after = silent.pop("pause_after", None)
    (wedged,) = await backends(1, **silent)
    if pause_after is not None:
        wedged.pause_after = pause_after  # (then waits for ``resume``, never set here)
    (good,) = await backends(1)
    async with running_gateway(_config([wedged.address, good.address])) as gw:
        for i in range(6):  # round-robin: three to each
            status, _ = await asyncio.wait_for(_stream(gw, f"p{i}"), 10)
            assert status == 200
        assert gw.health.ejections == 1
        assert _failures(gw, wedged.address) == 3
        assert _failures(gw, good.address) == 0
    assert len(wedged.received) == 3


class Dribbler(Staller):
    """A non-streamed answer's head (``Content-Length`` ``length``) and its body sent steadily, 1000 bytes
    every 0.05 s: a server still sending a long body."""

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.writers.append(w)
        try:
            await read_request(r)
            self.requests += 1
            w.write(self.head)
            w.write(self.sent)
            while True:
                await asyncio.sleep(0.05)
                w.write(b"x" * 1000)
                await w.drain()
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass


@pytest.mark.parametrize("steady", [True, False], ids=["sending", "silent"])
async def test_a_relayed_body_cut_by_the_deadline(steady: bool) -> None:
    """A non-streamed body past ``whole_max``, relayed as it comes, cut at the bound: not charged while its
    server was still sending (FAILED before: 3 failures), charged when it went silent (as before)."""
    cls = Dribbler if steady else Staller
    e = cls(10_000_000, b'{"id": "x", "pad": "' + b"x" * 1980)
    address = await e.start()
    try:
        async with running_gateway(_config([address])) as gw:
            gw.proxy.whole_max = 1000  # relayed as it comes (``_relay_whole``)
            for _ in range(3):
                assert await asyncio.wait_for(_whole(gw), 10) == 200
            failures = _failures(gw, address)
    finally:
        await e.stop()
    assert e.requests == 3
    assert failures == (0 if steady else 3), failures
