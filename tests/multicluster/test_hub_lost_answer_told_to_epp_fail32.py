"""Behind ``kvgate serve --clusters`` in Endpoint mode, a cluster's ``kvgate epp`` never heard of a pod that
lost its answer before the client had any of it: a non-streamed body cut before its end, or a stream ended
before its first data event. The hub moved on to another pod and cancelled the EPP's stream, which the EPP
reads as a client gone (nothing charged), so its passive health (``extproc.outlier``) kept picking the pod
(closing-s31; since fo31 a pod's 5xx headers are told). Now the hub tells the EPP the loss as the response
headers' ``:status`` 502 (``kvgate serve``'s status for an upstream's cut) before the cancel, as it tells
a 5xx. A real hub and a real ``kvgate epp`` (gRPC) on loopback (port 0) over two pods, one cutting.

Fails on main 2b9dcdff: the cutting pod is never ejected (the wait ends at 30 s)."""

from __future__ import annotations

import orjson
import pytest

from gateway.backend import Backend
from kvgate.multicluster.clusters import ClusterSpec
from multicluster.ejecting_epp import ejecting_epp, post_until_ejected
from rawupstream import raw_upstream

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
        async with raw_upstream(answer) as up, ejecting_epp([up.address, good.address]) as (epp_port, store):
            hub = await global_gateway(ClusterSpec("c0", epp=f"127.0.0.1:{epp_port}"))
            await post_until_ejected(hub.port, store, up.address, body, "the cutting pod")
            assert up.hits, "the cutting pod was never picked"
    finally:
        await good.stop()
