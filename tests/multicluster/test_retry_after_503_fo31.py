"""``kvgate serve --clusters``: its own 503 when no cluster could take the request says when to retry
(closing-s30 "Failover leftovers"; every 503 kvgate makes does since fo31). A real hub on loopback with
a pod that resets every request (Parent mode).

Fails on main 691110b3: the 503 had no ``Retry-After``."""

from __future__ import annotations

import aiohttp
import orjson

from kvgate.multicluster.clusters import ClusterSpec

BODY = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 1})


async def test_every_cluster_failed_503_says_when_to_retry(pods, global_gateway) -> None:
    a, b = await pods(), await pods()
    a.mode = b.mode = "drop"
    gw = await global_gateway(ClusterSpec("a", gateway=a.address), ClusterSpec("b", gateway=b.address))
    url = f"http://127.0.0.1:{gw.port}/v1/completions"
    async with aiohttp.ClientSession() as http, http.post(url, data=BODY) as r:
        body = await r.read()
        assert r.status == 503, body
        assert r.headers.get("Retry-After") == "1", (dict(r.headers), body)
