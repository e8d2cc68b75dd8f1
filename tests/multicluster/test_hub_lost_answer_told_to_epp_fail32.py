"""Behind ``kvgate serve --clusters`` in Endpoint mode, a cluster's ``kvgate epp`` never heard of a pod that
lost its answer before the client had any of it: a non-streamed body cut before its end, or a stream ended
before its first data event. The hub moved on to another pod and cancelled the EPP's stream, which the EPP
reads as a client gone (nothing charged), so its passive health (``extproc.outlier``) kept picking the pod
(closing-s31; since fo31 a pod's 5xx headers are told). Now the hub tells the EPP the loss as the response
headers' ``:status`` 502 (``kvgate serve``'s status for an upstream's cut) before the cancel, as it tells
a 5xx. A real hub and a real ``kvgate epp`` (gRPC) on loopback (port 0) over two pods, one cutting.

Fails on main 2b9dcdff: the cutting pod is never ejected (the wait ends at 30 s)."""

from __future__ import annotations

import time

import aiohttp
import orjson
import pytest

from gateway.backend import Backend
from kvgate.config.gateway import HealthConfig
from kvgate.datalayer.ejection import HealthTracker
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.context import AddressIndex, build_epp_director
from kvgate.extproc.outlier import Outlier
from kvgate.extproc.server import EppServer, ServerOptions
from kvgate.extproc.session import SessionContext
from kvgate.multicluster.clusters import ClusterSpec
from rawupstream import raw_upstream

WAIT_S = 30.0
# (a pod's answer, whether the request streams): a 200 whose JSON body falls short of its Content-Length,
# or an event stream framed by the close that closes after a comment, before any data event
CASES = {
    "json": (
        b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{"id": "cmpl-',
        False,
    ),
    "sse": (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n: ping\n\n",
        True,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_pod_that_loses_its_answer_behind_the_hub_is_ejected_by_its_epp(global_gateway, case) -> None:
    answer, stream = CASES[case]
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2, "stream": stream})
    good = await Backend("good").start()
    try:
        async with raw_upstream(answer) as up:
            bad = up.address
            store = EndpointStore.from_addresses([bad, good.address])
            index = AddressIndex(store)
            # (two failures eject it; the probe back far beyond the test)
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
                    while (ep := store.get(bad)) is not None and ep.healthy:
                        assert time.monotonic() < deadline, f"the cutting pod not ejected within {WAIT_S}s"
                        async with http.post(url, data=body) as r:
                            # (the other pod answers: qa30 Q9)
                            assert r.status == 200, await r.read()
                            await r.read()
                assert up.hits, "the cutting pod was never picked"
            finally:
                await epp.stop(0)
    finally:
        await good.stop()
