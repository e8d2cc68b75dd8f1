"""Review s26-rev-prev26 F7 at the hub (``kvgate serve --clusters``, loc27): a lookup (``GET
/v1/responses/{id}``) whose home cluster drains, then is gone, answers as a follow-up naming the id does:
the home's 503 with its own ``Retry-After`` while it drains (relayed, as before), then, gone (its gateway
resets the connection, or refuses it), 503 ``upstream_unavailable`` with ``Retry-After: 1`` naming the
response (it was a 502 without ``Retry-After``, while the follow-up got the 503: nowhere else keeps it).
Real HTTP on loopback; ports bound 0, none freed while the test runs."""

from __future__ import annotations

import aiohttp

from gateway.handler_server import serving
from gateway.test_draining_home_lookup_loc27 import DrainingStore, drain_then_go
from kvgate.multicluster.clusters import ClusterSpec
from multicluster.test_hub_ask_rounds_loc27 import _hub


async def test_a_draining_home_clusters_lookup_then_a_gone_one_is_a_503_to_retry() -> None:
    async with serving(DrainingStore("a"), DrainingStore("b")) as stores, aiohttp.ClientSession() as s:
        specs = [ClusterSpec("a", gateway=stores[0].address), ClusterSpec("b", gateway=stores[1].address)]
        async with _hub(*specs) as gw:
            await drain_then_go(s, f"http://127.0.0.1:{gw.port}/v1/responses", stores)
