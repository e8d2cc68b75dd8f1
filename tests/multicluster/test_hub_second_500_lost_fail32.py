"""qa30 Q6's rule in ``kvgate serve --clusters``: a second server's 500 for a request is the request's fault
(an engine error on that input), passed to the client, not run a third time. But the hub holds a 500's body
(and a stream's head until its first data event) like any answer's, and when that second 500's body was cut
before its end the request moved on to a third cluster, run there a third time (closing-s31). Now such a
request ends with the 500 (the hub's own body in place of the lost one), no cluster charged, as for a second
500 passed through: a request is run at most on two servers that answer it 500. Real hub on loopback
(Parent mode): c0 answers 500, c1 answers 500 and cuts its body (a raw server, port 0), c2 would answer.

Fails on main 2b9dcdff: c2 answers it (200), its third run."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from kvgate.multicluster.clusters import ClusterSpec
from rawupstream import raw_upstream

# (the second cluster's answer, whether the request streams): a 500 whose JSON body falls short of its
# Content-Length, or a 500 event stream framed by the close that closes before any data event
CASES = {
    "json": (
        b'HTTP/1.1 500 X\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{"error": ',
        False,
    ),
    "sse": (
        b"HTTP/1.1 500 X\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n: ping\n\n",
        True,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_second_500_whose_body_is_lost_is_the_clients_500_not_a_third_run(pods, global_gateway, case):
    answer, stream = CASES[case]
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2, "stream": stream})
    first, third = await pods(), await pods()
    first.mode = "error500"
    async with raw_upstream(answer) as second:
        # (round-robin: the first request's order is c0, c1, c2)
        hub = await global_gateway(
            ClusterSpec("c0", gateway=first.address), ClusterSpec("c1", gateway=second.address),
            ClusterSpec("c2", gateway=third.address),
        )  # fmt: skip
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{hub.port}/v1/completions", data=body) as r:
                status, raw = r.status, await r.read()
            async with http.get(f"http://127.0.0.1:{hub.port}/v1/clusters") as r:
                clusters = orjson.loads(await r.read())
        assert (status, len(third.received)) == (500, 0), (status, raw)
        assert "not run a third time" in orjson.loads(raw)["error"]["message"], raw
        assert len(first.received) == 1 and second.hits == [1]
        assert not [c["name"] for c in clusters if c["backing_off"]], clusters  # (nobody's fault but its own)
