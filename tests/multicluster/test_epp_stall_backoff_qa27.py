"""qa27 Q7 (test by the reviewer, adapted): a hung EPP (a stopped process, a wedged loop: it takes the
stream and never answers) made ``kvgate serve --clusters`` wait its full ``epp_timeout_s`` at every
request's pick, for as long as it stayed hung: nothing remembered the stall (``kill -STOP``: 8 requests in
a row, 2.0 s each, then Parent mode). Now a stall backs the cluster's Endpoint mode off (1 s, doubling to
8 s, as a failed cluster backs off): meanwhile its requests go by Parent mode at once; after the window one
request asks the EPP again (the others keep to Parent mode); an answer, or a health check that failed
after the stall and then answers SERVING, ends the back-off.

Fails on 6782b99d: requests 2-4 each ask the EPP again and wait its deadline (4 stalls, 4 streams).
The router's clock is a fake one (the windows pass when the test says); the EPP's deadline is real time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from fake_time import FakeTime
from gateway.backend import Backend
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.fetcher import _verdict
from kvgate.multicluster.serve import GlobalGateway
from kvgate.multicluster.state import FAILURE_BACKOFF_S, ClusterState
from multicluster.test_epp_stall import _scripted, _StallingEpp

DEADLINE = 2.0  # the EPP's deadline (real time; the default: a healthy EPP answers well within it)


async def _post(gw: GlobalGateway) -> tuple[str, float]:
    """One request through the global gateway: its route mode and how long it took (real time)."""
    body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 3})
    t0 = time.monotonic()
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=body) as r:
        await asyncio.wait_for(r.read(), 60)
        assert r.status == 200
        return r.headers["x-kvgate-route-mode"], time.monotonic() - t0


def _count(gw: GlobalGateway, name: str, **labels: str) -> float:
    return gw.metrics.registry.get_sample_value(name, {"cluster": "c1", **labels}) or 0.0


def _summary(gw: GlobalGateway) -> dict[str, Any]:
    [c1] = gw.router.summary()
    return c1


async def test_a_hung_epp_does_not_cost_every_request_its_deadline() -> None:
    pod = await Backend("pod").start()
    parent = await Backend("parent").start()  # the cluster's own gateway (Parent mode)
    epp = _StallingEpp(pod.address, "pick", rewrite=False)
    server, port = await _scripted(epp)
    c1 = ClusterSpec("c1", epp=f"127.0.0.1:{port}", gateway=parent.address)
    fake = FakeTime(1000.0)
    gw = GlobalGateway(ClustersConfig((c1,), epp_timeout_s=DEADLINE), "round-robin", fetch=False,
                       clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    gw.router.epp.sleep = fake.sleep
    await gw.start("127.0.0.1", 0)
    stalled = "kvgate_multicluster_epp_stalled_total"
    skipped = "kvgate_multicluster_epp_skipped_total"
    try:
        mode, took = await _post(gw)
        assert mode == "parent" and took >= DEADLINE * 0.9  # (the first one finds the EPP hung)
        assert _count(gw, stalled, phase="pick") == 1
        # Requests 2-4 (the window not over): Parent mode at once, the EPP not asked (on 6782b99d each
        # asked it and waited its deadline).
        for _ in range(3):
            mode, _took = await _post(gw)
            assert mode == "parent"
        assert (_count(gw, stalled, phase="pick"), _count(gw, skipped)) == (1, 3)
        assert _summary(gw)["epp_backing_off"] and _summary(gw)["epp_backoff_s"] == FAILURE_BACKOFF_S

        # The window over: one request asks again (it stalls: the back-off doubles), the others do not.
        fake.advance(FAILURE_BACKOFF_S)
        modes = await asyncio.gather(*(_post(gw) for _ in range(3)))
        assert [m for m, _ in modes] == ["parent"] * 3
        assert (_count(gw, stalled, phase="pick"), _count(gw, skipped)) == (2, 5)
        assert _summary(gw)["epp_backoff_s"] == 2 * FAILURE_BACKOFF_S

        # The EPP back: the next window's trial is answered, and Endpoint mode is back for every request.
        epp.stall_at = None
        fake.advance(2 * FAILURE_BACKOFF_S)
        for _ in range(2):
            mode, _took = await _post(gw)
            assert mode == "endpoint"
        assert len(pod.received) == 2 and _count(gw, stalled, phase="pick") == 2 and _count(gw, skipped) == 5
        assert _summary(gw)["epp_backoff_s"] == 0 and not _summary(gw)["epp_backing_off"]
    finally:
        await gw.stop()
        await server.stop(0)
        for b in (pod, parent):
            await b.stop()


def test_one_hang_is_one_stall_and_a_health_check_that_comes_back_ends_it() -> None:
    st = ClusterState(
        ClusterSpec("c1", epp="127.0.0.1:9002", gateway="127.0.0.1:8080", health="127.0.0.1:9003")
    )
    gate = st.epp
    assert gate.stalled(10.0, 9.0, st.healthy) and gate.backoff_s == FAILURE_BACKOFF_S
    # The requests already waiting on it when it hung stall one after another: one event.
    assert not gate.stalled(10.2, 9.5, st.healthy) and gate.backoff_s == FAILURE_BACKOFF_S
    assert not gate.may_ask(10.5)
    assert gate.may_ask(11.0) and not gate.may_ask(11.0)  # (one trial at a time)
    gate.trial_over()
    assert gate.may_ask(11.1)  # (a trial that ended without a verdict: the next request asks)
    assert gate.stalled(11.6, 11.1, st.healthy) and gate.backoff_s == 2 * FAILURE_BACKOFF_S
    # A health check that answered SERVING all along says nothing of a hung ext_proc stream.
    _verdict(st, "127.0.0.1:9003", True)
    assert gate.backoff_s and not gate.may_ask(12.0)
    # One that fails after the stall, then answers SERVING: the EPP is back.
    _verdict(st, "127.0.0.1:9003", False)
    assert gate.backoff_s and st.healthy is False
    _verdict(st, "127.0.0.1:9003", True)
    assert gate.backoff_s == 0 and gate.may_ask(12.0) and st.healthy is True
    # Another EPP address (a reload): the old one's back-off goes.
    assert gate.stalled(13.0, 12.5, st.healthy)
    st.respec(ClusterSpec("c1", epp="127.0.0.1:9012", gateway="127.0.0.1:8080", health="127.0.0.1:9003"))
    assert st.epp.backoff_s == 0 and st.epp.may_ask(13.1)
