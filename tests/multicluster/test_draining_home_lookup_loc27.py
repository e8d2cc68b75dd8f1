"""Review s26-rev-prev26 F7 at the hub (``kvgate serve --clusters``, loc27): a lookup (``GET
/v1/responses/{id}``) whose home cluster drains, then is gone, answers as a follow-up naming the id does:
the home's 503 with its own ``Retry-After`` while it drains (relayed, as before), then, gone (its gateway
resets the connection, or refuses it), 503 ``upstream_unavailable`` with ``Retry-After: 1`` naming the
response (it was a 502 without ``Retry-After``, while the follow-up got the 503: nowhere else keeps it).
Real HTTP on loopback; ports bound 0, none freed while the test runs."""

from __future__ import annotations

import aiohttp
import orjson

from gateway.handler_server import serving
from gateway.test_draining_home_lookup_loc27 import DrainingStore
from kvgate.multicluster.clusters import ClusterSpec
from multicluster.test_hub_ask_rounds_loc27 import _hub


async def test_a_draining_home_clusters_lookup_then_a_gone_one_is_a_503_to_retry() -> None:
    async with serving(DrainingStore("a"), DrainingStore("b")) as stores, aiohttp.ClientSession() as s:
        specs = [ClusterSpec("a", gateway=stores[0].address), ClusterSpec("b", gateway=stores[1].address)]
        async with _hub(*specs) as gw:
            url = f"http://127.0.0.1:{gw.port}/v1/responses"
            async with s.post(url, data=orjson.dumps({"model": "m", "input": "q"})) as r:
                assert r.status == 200, await r.read()
                rid = orjson.loads(await r.read())["id"]
            home = next(st for st in stores if rid in st.made)
            follow = orjson.dumps({"model": "m", "input": "more", "previous_response_id": rid})

            home.state = "draining"
            async with s.get(f"{url}/{rid}") as r:
                assert (r.status, r.headers.get("Retry-After")) == (503, "5"), await r.read()
            async with s.post(url, data=follow) as r:
                assert (r.status, r.headers.get("Retry-After")) == (503, "5"), await r.read()

            home.state = "gone"
            async with s.get(f"{url}/{rid}") as r:
                # (before loc27: 502 "lookup failed", no Retry-After)
                assert (r.status, r.headers.get("Retry-After")) == (503, "1"), await r.read()
                doc = orjson.loads(await r.read())
                assert doc["error"]["code"] == "upstream_unavailable"
                assert f"which holds response '{rid}', could not be reached" in doc["error"]["message"]
            async with s.post(url, data=follow) as r:  # (as a follow-up's, unchanged)
                assert (r.status, r.headers.get("Retry-After")) == (503, "1"), await r.read()
