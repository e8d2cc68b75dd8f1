"""Behind ``kvgate serve --clusters`` in Endpoint mode, a cluster's ``kvgate epp`` never heard a pod's 5xx:
the hub moved on to another pod and cancelled the EPP's stream without passing it the pod's response
headers (as Envoy would), so the EPP's passive health (``extproc.outlier``, qa30 Q2) never charged the pod
and a pod answering every request 500 stayed in its rotation (closing-s30 "Failover leftovers"). Now the
hub passes the 5xx's headers to the EPP first. A real hub and a real ``kvgate epp`` (gRPC) on loopback
(port 0) over two pods, one answering 500.

Fails on main 691110b3: the failing pod is never ejected (the wait ends at 30 s)."""

from __future__ import annotations

import time

import aiohttp
import orjson

from gateway.backend import Backend
from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.ejection import HealthTracker
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.outlier import Outlier
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClusterSpec

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
WAIT_S = 30.0


async def test_a_pods_500_behind_the_hub_reaches_its_epp_which_ejects_it(global_gateway) -> None:
    bad, good = await Backend("bad").start(), await Backend("good").start()
    bad.mode = "error500"
    store = EndpointStore.from_addresses([bad.address, good.address])
    index = AddressIndex(store)
    # (two failures eject it; the probe far beyond the test)
    tracker = HealthTracker(HealthConfig(eject_after_failures=2, eject_base_s=300, eject_max_s=300),
                            time.monotonic, store.all)  # fmt: skip
    ctx = SessionContext(build_epp_director(None, store, policy="round-robin"), index,
                         clock=time.monotonic, outlier=Outlier(tracker, index))  # fmt: skip
    epp = EppServer(ctx, ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=None))
    await epp.start()
    try:
        hub = await global_gateway(ClusterSpec("c0", epp=f"127.0.0.1:{epp.port}"))
        url = f"http://127.0.0.1:{hub.port}/v1/completions"
        deadline = time.monotonic() + WAIT_S
        async with aiohttp.ClientSession() as http:
            while (ep := store.get(bad.address)) is not None and ep.healthy:
                assert time.monotonic() < deadline, f"the 500-answering pod not ejected within {WAIT_S}s"
                async with http.post(url, data=BODY) as r:
                    assert r.status == 200, await r.read()  # (the other pod answers: qa30 Q9)
        assert bad.received, "the failing pod was never picked"
    finally:
        await epp.stop(0)
        await bad.stop()
        await good.stop()
