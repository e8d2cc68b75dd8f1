"""review s27-rev-fixes27b F2 (L; qa27 Q7's back-off, 2cfd779e): a cluster with no ``gateway`` keeps asking
its EPP after a stall (documented: "there is no other route"), yet its stall still sets and doubles
``ClusterState.epp``: ``/v1/clusters`` then says ``epp_backing_off: true`` / ``epp_backoff_s`` 1, 2, 4 ...
for an EPP every request still asks, and the WARNING says "Endpoint mode backs off 1s", and the next answer
logs "Endpoint mode back" though it never left. An operator reading /v1/clusters is told the EPP is not
being asked when it is.

Fails on 2cfd779e-13dea945 (before the lead's fix): ``epp_backing_off`` is True after one stall of a
gateway-less cluster. The router's clock is fake (no window passes by
itself); the EPP's deadline is real time (0.5 s), the request bounded by 60 s.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson

from fake_time import FakeTime
from gateway.backend import Backend
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from multicluster.test_epp_stall import _scripted, _StallingEpp


async def test_a_gateway_less_cluster_that_still_asks_its_epp_is_not_reported_backing_off() -> None:
    pod = await Backend("pod").start()
    epp = _StallingEpp(pod.address, "pick", rewrite=False)
    server, port = await _scripted(epp)
    fake = FakeTime(1000.0)
    spec = ClusterSpec("c1", epp=f"127.0.0.1:{port}")  # Endpoint mode only: no Parent route
    gw = GlobalGateway(ClustersConfig((spec,), epp_timeout_s=0.5), "round-robin", fetch=False,
                       clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    gw.router.epp.sleep = fake.sleep
    await gw.start("127.0.0.1", 0)
    try:
        body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 3})
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{gw.port}/v1/completions", data=body) as r,
        ):
            await asyncio.wait_for(r.read(), 60)
            assert r.status >= 500  # (the stall, nowhere else to go)
        assert epp.streams == 1
        [c1] = gw.router.summary()
        # The EPP is still asked by the next request (no Parent route): nothing is backing off.
        assert not c1["epp_backing_off"], c1
    finally:
        await gw.stop()
        await server.stop(0)
        await pod.stop()
