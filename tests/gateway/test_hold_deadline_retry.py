"""Review s18-gw M1 (its test, kept): a non-streamed answer whose body stalls (head sent, part of a small
body sent, then nothing) until the request's deadline: ``Proxy._hold`` caught the ``ReadTimeout`` as
``_UPSTREAM_ERRORS`` ("body read failed") and ``continue``d: the request was written to a second endpoint
*after* its requestTimeoutSeconds was spent (a generation for nobody), and the first endpoint was charged
whatever ``owns_deadline`` said (c1ce3f3 covered head, first chunk, relays, not the held body).

Raw asyncio backends on loopback, one gateway (no flow control, requestTimeoutSeconds 1)."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import orjson

from gateway.conftest import base_url, make_config, running_gateway
from gateway.sse_upstream import Staller


def _staller() -> Staller:
    """A head (Content-Length 100) and 10 body bytes, then nothing."""
    return Staller(100, b'{"id": "x"')


async def test_a_body_stalled_to_the_deadline_is_not_sent_again_after_it() -> None:
    a, b = _staller(), _staller()
    addrs = [await a.start(), await b.start()]
    cfg = make_config(addrs, extra={"limits": {"requestTimeoutSeconds": 1, "idleTimeoutSeconds": 30}})
    try:
        async with running_gateway(cfg) as gw:
            t = time.monotonic()
            async with aiohttp.ClientSession() as s:
                body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
                async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                    status = r.status
                    code = orjson.loads(await r.read())["error"]["code"]
            took = time.monotonic() - t
            await asyncio.sleep(0.3)
            assert status == 504
            assert took < 5
            assert code == "upstream_timeout"
            # The deadline was spent on the first endpoint: nothing may be sent after it.
            assert a.requests + b.requests == 1, (
                f"sent to {a.requests + b.requests} endpoints: retried after requestTimeoutSeconds"
            )
    finally:
        await a.stop()
        await b.stop()


async def test_a_queued_requests_body_stalled_to_the_deadline_is_charged_as_a_head_would_be() -> None:
    """The same stall after the request queued most of its bound in flow control (one slot): the 504
    names the deadline and, as for a head that never came, the endpoint is not charged for the
    gateway's queue (before: charged as a failed read, the request then tried again: a 503)."""
    a = _staller()
    addr = await a.start()
    picker = {
        "featureGates": ["flowControl"],
        "saturationDetector": {"type": "concurrency-detector", "parameters": {"maxConcurrency": 1}},
    }
    cfg = make_config(
        [addr],
        extra={
            "limits": {"requestTimeoutSeconds": 1, "idleTimeoutSeconds": 30},
            "health": {"ejectAfterFailures": 5},
        },
    )
    cfg.pools[0].picker_config = picker
    try:
        async with running_gateway(cfg) as gw:
            async with aiohttp.ClientSession() as s:

                async def post(prompt: str) -> tuple[int, str]:
                    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 2})
                    async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                        return r.status, orjson.loads(await r.read())["error"]["code"]

                first = asyncio.ensure_future(post("a"))
                await asyncio.sleep(0.2)  # queued behind the first until ~1.0 s: sent with ~0.2 s left
                second = await post("b")
                assert await first == (504, "upstream_timeout")
            assert second == (504, "upstream_timeout"), second
            assert a.requests == 2
            st = gw.health._state[addr]
            assert st.failures == 1, "the second's queue time was charged to the endpoint"
    finally:
        await a.stop()


async def test_no_attempt_starts_after_the_deadline() -> None:
    """An attempt that fails after requestTimeoutSeconds (here a connect that takes its own
    connectTimeoutSeconds, longer than the bound) is not followed by another: the client gets the 504
    ``request_timeout`` then (before: the request was written to the next endpoint with its bound spent,
    and answered 504 naming that endpoint, which was charged for it)."""
    hole = socket.socket()  # a listener that never accepts, its backlog full: connects hang
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    filler = [socket.socket() for _ in range(3)]
    for f in filler:
        f.setblocking(False)
        f.connect_ex(hole.getsockname())  # (in progress: the backlog takes one, the rest hang)
    b = _staller()
    addrs = [f"127.0.0.1:{hole.getsockname()[1]}", await b.start()]
    limits = {"requestTimeoutSeconds": 1, "idleTimeoutSeconds": 30, "connectTimeoutSeconds": 1.5}
    cfg = make_config(addrs, extra={"limits": limits})
    try:
        async with running_gateway(cfg) as gw:
            got = []
            async with aiohttp.ClientSession() as s:
                for i in range(2):  # (round-robin: one of the two tries the listener first)
                    body = orjson.dumps({"model": "m", "prompt": f"x{i}", "max_tokens": 2})
                    async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                        got.append((r.status, orjson.loads(await r.read())["error"]["code"]))
            await asyncio.sleep(0.3)
            assert sorted(got) == [(504, "request_timeout"), (504, "upstream_timeout")], got
            assert b.requests == 1, f"{b.requests} requests written to the second endpoint"
    finally:
        await b.stop()
        for f in filler:
            f.close()
        hole.close()
