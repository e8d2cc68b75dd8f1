"""review s27-rev-fixes27b F1 (qa27 Q7's back-off, 2cfd779e): a reload that changes a cluster's ``epp:``
drops the old EPP's stall back-off (``ClusterState.respec``: "another EPP: what the old one did says
nothing of it"), but a stream asked of the OLD EPP before the reload and stalling after it is charged to
the NEW EPP's fresh ``EppBackoff`` (``GlobalRouter._epp_stalled`` reads ``st.epp`` when the stall fires, and
a fresh back-off has no ``since`` to tell an older stream by). The new, healthy EPP is then skipped: the
next request goes by Parent mode without asking it, and ``epp_skipped_total`` counts it.

Fails on 2cfd779e-13dea945 (before the lead's fix): request 2 is routed ``parent`` (skipped),
/v1/clusters shows ``epp_backing_off`` for the new EPP.
The router's clock is a fake one (the back-off window never passes by itself); the old EPP's deadline is
real time (2 s), waited for with a 60 s bound.
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

DEADLINE = 2.0  # (real time: the new EPP answers well within it, as test_epp_stall_backoff_qa27)


async def _post(gw: GlobalGateway) -> str:
    body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 3})
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=body) as r:
        await asyncio.wait_for(r.read(), 60)
        assert r.status == 200
        return r.headers["x-kvgate-route-mode"]


async def test_a_stall_of_the_old_epp_after_a_reload_does_not_back_off_the_new_one() -> None:
    pod = await Backend("pod").start()
    parent = await Backend("parent").start()
    old = _StallingEpp(pod.address, "pick", rewrite=False)  # hung
    new = _StallingEpp(pod.address, None, rewrite=False)  # healthy
    old_server, old_port = await _scripted(old)
    new_server, new_port = await _scripted(new)
    spec = ClusterSpec("c1", epp=f"127.0.0.1:{old_port}", gateway=parent.address)
    fake = FakeTime(1000.0)
    gw = GlobalGateway(ClustersConfig((spec,), epp_timeout_s=DEADLINE), "round-robin", fetch=False,
                       clock=fake.clock, sleep=fake.sleep)  # fmt: skip
    gw.router.epp.sleep = fake.sleep
    await gw.start("127.0.0.1", 0)
    try:
        first = asyncio.ensure_future(_post(gw))
        await asyncio.wait_for(old.stalled.wait(), 60)  # the old EPP holds request 1's pick
        # The operator points the cluster at a new EPP while request 1 still waits on the old one.
        moved = ClusterSpec("c1", epp=f"127.0.0.1:{new_port}", gateway=parent.address)
        gw.reload(ClustersConfig((moved,), epp_timeout_s=DEADLINE))
        assert gw.router.states["c1"].epp.backoff_s == 0  # (the reload dropped what the old EPP did)
        assert await asyncio.wait_for(first, 60) == "parent"  # request 1: the old EPP's stall, Parent mode
        # Request 2: the new EPP has never stalled; it must be asked.
        [c1] = gw.router.summary()
        assert not c1["epp_backing_off"], c1
        assert await _post(gw) == "endpoint"
        assert new.streams == 1
    finally:
        await gw.stop()
        await old_server.stop(0)
        await new_server.stop(0)
        for b in (pod, parent):
            await b.stop()
