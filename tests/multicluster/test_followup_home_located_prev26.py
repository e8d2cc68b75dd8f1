"""``kvgate serve --clusters`` restarted between turns (prev26): it no longer knows which cluster made each
Responses id, so a follow-up (``previous_response_id``) or a lookup naming one is asked of the clusters'
gateways (``lookups.ClusterLocator``: ``GET /v1/responses/{id}``) and sent to the cluster that keeps it.
Before, the policy's order (round robin here) decided, and half of them reached the other cluster's 404
"Response ... not found". A cluster that cannot be asked while no other keeps the id: 503 with
``Retry-After``, not a 404. Real HTTP on loopback: Responses stores as the clusters' gateways."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.multicluster.clusters import ClusterSpec


async def test_follow_ups_and_lookups_after_a_hub_restart_reach_their_home_clusters(
    global_gateway: Callable[..., Any],
) -> None:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as stores, aiohttp.ClientSession() as s:
        specs = [ClusterSpec("a", gateway=stores[0].address), ClusterSpec("b", gateway=stores[1].address)]
        gw = await global_gateway(*specs)
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        made: list[str] = []
        for i in range(6):
            async with s.post(url, data=orjson.dumps({"model": "m", "input": f"q{i}"})) as r:
                assert r.status == 200
                made.append(orjson.loads(await r.read())["id"])
        home = {rid: st for st in stores for rid in st.made}
        made.sort(key=lambda rid: home[rid].name)  # (grouped by home: round robin misses half of them)
        gw = await global_gateway(*specs)  # restarted: it knows no id
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        for rid in made:
            body = {"model": "m", "input": "more", "previous_response_id": rid}
            async with s.post(url, data=orjson.dumps(body)) as r:
                assert r.status == 200, await r.read()
            assert rid in home[rid].followed
        gw = await global_gateway(*specs)  # and again: lookups first
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        for rid in made:
            async with s.get(f"{url}/{rid}") as r:
                assert r.status == 200, await r.read()
                assert orjson.loads(await r.read())["id"] == rid
        assert gw.locator.rounds == len(made)


async def test_an_unknown_id_with_a_cluster_unreachable_gets_503_not_a_404(
    global_gateway: Callable[..., Any],
) -> None:
    async with serving(ResponsesStore("s0"), ResponsesStore("s1")) as stores, aiohttp.ClientSession() as s:
        specs = [ClusterSpec("a", gateway=stores[0].address), ClusterSpec("b", gateway=stores[1].address)]
        gw = await global_gateway(*specs)
        await stores[1].stop()  # (it may hold the id: it cannot say)
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        body = {"model": "m", "input": "more", "previous_response_id": "resp_unknown"}
        async with s.post(url, data=orjson.dumps(body)) as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1", await r.read()
            assert b"could not be asked" in await r.read()
        async with s.get(f"{url}/resp_unknown") as r:
            assert r.status == 503 and r.headers["Retry-After"] == "1", await r.read()
