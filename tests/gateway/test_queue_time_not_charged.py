"""Review s17-fixes-b L6: ``requestTimeoutSeconds`` bounds the client's whole wait, flow control's queue
included, and an endpoint is charged a timeout only for time it had the request.

Real requests on loopback: flow control with a concurrency detector admitting one request at a time, so
the second request really waits in the gateway's queue. Before the fix (a) a request queued most of its
deadline then timing out on a healthy endpoint charged that endpoint a failure (so under overload healthy
endpoints collected failures for the gateway's own queue time), and (b) the queue wait was not bounded by
the deadline at all: a request waited for capacity as long as the flow-control TTL (30 s), then went to an
endpoint with its deadline already spent (an instant 504 charged to that endpoint).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import aiohttp
import orjson

from gateway.conftest import base_url, running_gateway
from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.server import GatewayServer


def _config(address: str, timeout: float) -> Any:
    return parse_gateway_config(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "limits": {"requestTimeoutSeconds": timeout, "idleTimeoutSeconds": 30},
            "health": {"ejectAfterFailures": 5},
            "pools": [
                {
                    "name": "p",
                    "endpoints": [address],
                    "models": ["m"],
                    "endpointPickerConfig": {
                        "featureGates": ["flowControl"],
                        "saturationDetector": {
                            "type": "concurrency-detector",
                            "parameters": {"maxConcurrency": 1},
                        },
                    },
                }
            ],
        }
    )


async def _post(gw: GatewayServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    url = base_url(gw) + "/v1/completions"
    async with aiohttp.ClientSession() as s, s.post(url, data=orjson.dumps(body)) as r:
        return r.status, orjson.loads(await r.read())


def _failures(gw: GatewayServer, address: str) -> int:
    st = gw.health._state.get(address)
    return 0 if st is None else st.failures


async def test_a_request_queued_most_of_its_deadline_does_not_charge_the_endpoint(backends):
    (b,) = await backends(1)
    b.answer_delay = 0.8  # every answer takes 0.8 s (a healthy, ordinary generation)
    async with running_gateway(_config(b.address, 1.2)) as gw:
        first = asyncio.ensure_future(_post(gw, {"model": "m", "prompt": "a", "max_tokens": 2}))
        await asyncio.wait_for(b.arrived.wait(), 30)  # the first holds the one slot now
        # Queued until the first's answer (~0.8 s), then sent with ~0.4 s of its 1.2 s left: the
        # endpoint, answering in 0.8 s, misses the deadline through no fault of its own.
        status, body = await _post(gw, {"model": "m", "prompt": "b", "max_tokens": 2})
        assert (await first)[0] == 200
        assert status == 504, body
        assert len(b.received) == 2  # it did reach the endpoint (a real queued-then-sent request)
        assert _failures(gw, b.address) == 0, "the gateway's queue time was charged to the endpoint"
        assert all(ep.healthy for ep in gw.pools[0].endpoints())


async def test_the_deadline_bounds_the_wait_in_the_flow_control_queue(backends):
    (b,) = await backends(1)
    b.pause_after = 0  # the first request's stream holds the one slot until the test resumes it
    async with running_gateway(_config(b.address, 0)) as gw:  # (0: no deadline for the first)
        url = base_url(gw) + "/v1/completions"
        async with aiohttp.ClientSession() as s:
            body = orjson.dumps({"model": "m", "prompt": "a", "max_tokens": 3, "stream": True})
            async with s.post(url, data=body) as held:
                assert held.status == 200
                await asyncio.wait_for(b.paused.wait(), 30)
                assert gw.proxy is not None
                gw.proxy.request_timeout = 0.5  # (as a reload sets it) for the next request
                # Queued behind the held stream: answered at its own deadline, while the stream still
                # holds the capacity (before: it waited for the slot, here forever; the TTL is 30 s).
                queued = _post(gw, {"model": "m", "prompt": "b", "max_tokens": 2})
                status, err = await asyncio.wait_for(queued, 10)
                assert not b.resume.is_set()
                assert status == 504, err
                assert err["error"]["code"] == "request_timeout"
                assert "requestTimeoutSeconds" in err["error"]["message"]
                assert len(b.received) == 1  # never sent: its deadline was spent in the queue
                b.resume.set()
                await held.read()
        assert _failures(gw, b.address) == 0


async def test_a_queued_stream_cut_at_its_deadline_does_not_charge_the_endpoint(backends):
    """The same for a stream: queued most of its deadline, then cut by it mid-stream while the endpoint
    sends tokens at its ordinary pace."""
    (b,) = await backends(1, tokens=10, chunk_delay=0.2)  # a 2 s stream
    b.answer_delay = 0.8
    async with running_gateway(_config(b.address, 1.2)) as gw:
        first = asyncio.ensure_future(_post(gw, {"model": "m", "prompt": "a", "max_tokens": 2}))
        await asyncio.wait_for(b.arrived.wait(), 30)
        async with aiohttp.ClientSession() as s:
            body = orjson.dumps({"model": "m", "prompt": "b", "max_tokens": 10, "stream": True})
            async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
                assert r.status == 200
                text = await r.read()
        assert (await first)[0] == 200
        assert b'"error"' in text and b"[DONE]" not in text  # cut at its deadline
        assert _failures(gw, b.address) == 0, "the gateway's queue time was charged to the endpoint"


async def test_a_flow_controlled_request_not_queued_arms_no_timer(backends, monkeypatch):
    """Review s18-gw L2: the deadline of a request flow control picks at once (the usual case) costs no
    ``asyncio.timeout_at`` (a timer armed and cancelled per request: +3.7 us under uvloop); a queued one
    leaves the queue at its deadline by the queue's own expiry (the test above)."""
    (b,) = await backends(1)
    async with running_gateway(_config(b.address, 5)) as gw:
        armed: list[str] = []
        timeout_at = asyncio.timeout_at

        def spy(when: float | None) -> asyncio.Timeout:
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("kvgate."):  # (not the test's aiohttp client: it uses one per read)
                armed.append(caller)
            return timeout_at(when)

        monkeypatch.setattr(asyncio, "timeout_at", spy)
        status, _ = await _post(gw, {"model": "m", "prompt": "a", "max_tokens": 2})
        monkeypatch.undo()
        assert status == 200
        assert armed == [], "a timer per flow-controlled request that was never queued"


async def test_a_wedged_endpoint_is_still_charged_when_every_request_queued_first(backends):
    """Review s18-gw L4: a wedged engine (accepts, never answers) holds its one slot to each request's
    deadline, so every later request reaches it after queuing most of its bound, with less than half
    left: no single timeout is charged (the gateway's queue is not the endpoint's), yet the endpoint is
    charged for the time it had them (a failure per half bound of it, ``HealthTracker.timed_out``).
    Before: only the first (unqueued) request's timeout was charged, the rest never: a wedged engine
    stayed in rotation for as long as the overload it caused."""
    (b,) = await backends(1)
    b.answer_delay = 60.0  # wedged: /health and /metrics fine, no answer
    async with running_gateway(_config(b.address, 1.0)) as gw:
        posts = []
        for i in range(9):  # one every 0.25 s: each queues ~0.75 s behind the one before
            posts.append(asyncio.ensure_future(_post(gw, {"model": "m", "prompt": f"p{i}", "max_tokens": 2})))
            await asyncio.sleep(0.25)
        done = await asyncio.wait_for(asyncio.gather(*posts), 20)
        sent = len(b.received)
        assert [s for s, _ in done].count(504) == 9
        assert sent >= 5, f"only {sent} reached the endpoint"  # (the rest timed out in the queue)
        # The first owned its deadline (charged); the others had ~0.25 s each, back to back: about one
        # failure per 0.5 s of them (the review's case: none).
        assert _failures(gw, b.address) >= 3, _failures(gw, b.address)
