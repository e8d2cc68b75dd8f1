"""Behind ``kvgate serve --clusters`` in Endpoint mode, a cluster's ``kvgate epp`` never heard a pod's 5xx:
the hub moved on to another pod and cancelled the EPP's stream without passing it the pod's response
headers (as Envoy would), so the EPP's passive health (``extproc.outlier``, qa30 Q2) never charged the pod
and a pod answering every request 500 stayed in its rotation (closing-s30 "Failover leftovers"). Now the
hub passes the 5xx's headers to the EPP first. A real hub and a real ``kvgate epp`` (gRPC) on loopback
(port 0) over two pods, one answering 500.

Fails on main 691110b3: the failing pod is never ejected (the wait ends at 30 s)."""

from __future__ import annotations

import orjson

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClusterSpec
from multicluster.ejecting_epp import ejecting_epp, post_until_ejected

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})


async def test_a_pods_500_behind_the_hub_reaches_its_epp_which_ejects_it(global_gateway) -> None:
    bad, good = await Backend("bad").start(), await Backend("good").start()
    bad.mode = "error500"
    try:
        async with ejecting_epp([bad.address, good.address]) as (epp_port, store):
            hub = await global_gateway(ClusterSpec("c0", epp=f"127.0.0.1:{epp_port}"))
            await post_until_ejected(hub.port, store, bad.address, BODY, "the 500-answering pod")
        assert bad.received, "the failing pod was never picked"
    finally:
        await bad.stop()
        await good.stop()
