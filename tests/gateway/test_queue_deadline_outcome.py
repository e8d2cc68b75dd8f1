"""A request whose ``requestTimeoutSeconds`` ends its wait in flow control's queue (504 ``request_timeout``)
is counted under its own outcome, ``EvictedRequestTimeout`` (before: ``EvictedTTL``, the queue TTL's 503
outcome), and answered at its deadline, not up to a recheck interval (20 ms) later: the dispatcher's next
pass is at the next queued request's expiry when that comes first. Real HTTP on loopback; /metrics scraped
from the gateway."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.conftest import base_url, running_gateway
from gateway.test_queue_time_not_charged import _config
from kvgate.flowcontrol.config import FlowControlConfig
from kvgate.flowcontrol.controller import EVICTED_REQUEST_TIMEOUT, EVICTED_TTL, FlowController
from kvgate.flowcontrol.dispatcher import FlowDispatcher
from kvgate.scheduling.types import InferenceRequest, PickResult, QueueTimeoutError


async def _outcomes(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == "kvgate_flow_control_requests_total":  # (process-wide: a delta is read)
                out[smp.labels["outcome"]] = out.get(smp.labels["outcome"], 0.0) + smp.value
    return out


async def test_a_request_queued_past_its_deadline_is_counted_as_its_own_outcome(backends):
    (b,) = await backends(1)
    b.pause_after = 0  # the first request's stream holds the one slot until the test resumes it
    async with running_gateway(_config(b.address, 0)) as gw:
        url = base_url(gw)
        before = await _outcomes(url)
        async with aiohttp.ClientSession() as s:
            body = orjson.dumps({"model": "m", "prompt": "a", "max_tokens": 3, "stream": True})
            async with s.post(url + "/v1/completions", data=body) as held:
                assert held.status == 200
                await asyncio.wait_for(b.paused.wait(), 30)
                assert gw.proxy is not None
                gw.proxy.request_timeout = 0.3
                hdrs = {"content-type": "application/json"}
                queued = s.post(
                    url + "/v1/completions",
                    data=orjson.dumps({"model": "m", "prompt": "b", "max_tokens": 2}),
                    headers=hdrs,
                )
                async with queued as r:
                    assert r.status == 504
                    assert (await r.json())["error"]["code"] == "request_timeout"
                b.resume.set()
                await held.read()
        after = await _outcomes(url)
    got = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert got.get(EVICTED_REQUEST_TIMEOUT) == 1.0, got
    assert EVICTED_TTL not in got, got


def test_the_ttl_keeps_its_own_outcome() -> None:
    ctl = FlowController(FlowControlConfig(ttl=30.0))
    a = ctl.enqueue(InferenceRequest("a", "m", prompt_tokens=10), 100.0, bound=105.0)
    b = ctl.enqueue(InferenceRequest("b", "m", prompt_tokens=10), 100.0, bound=200.0)  # (the TTL first)
    c = ctl.enqueue(InferenceRequest("c", "m", prompt_tokens=10), 100.0)
    assert ctl.expire(105.0) == [a] and a.outcome == EVICTED_REQUEST_TIMEOUT
    assert ctl.expire(130.0) == [b, c] and b.outcome == c.outcome == EVICTED_TTL


async def test_the_504_comes_at_the_deadline_not_at_the_next_recheck() -> None:
    """A recheck interval far longer than the request's deadline: the pass at the deadline answers it
    (before: at the next recheck, here 60 s later)."""
    d = FlowDispatcher(
        FlowController(FlowControlConfig(ttl=120.0)),
        pick=lambda _r, _e: PickResult([], "default"),
        saturated=lambda _r: True,
        clock=time.monotonic,
        recheck_interval=60.0,
    )
    t = time.monotonic()
    with pytest.raises(QueueTimeoutError):
        await asyncio.wait_for(d.admit(InferenceRequest("a", "m", prompt_tokens=10), wait_max=0.1), 10)
    assert time.monotonic() - t >= 0.1
    assert len(d) == 0
