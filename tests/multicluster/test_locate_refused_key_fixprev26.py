"""Review s26-rev-prev26 F1 at the hub (fixprev26): a cluster's gateway answering the ask 401 (a wrong key)
counted as "not here", so a wrong key's lookup kept the id as found nowhere for 2 s, for every client: the
right key's lookup was then routed by the policy's order without asking, to the other cluster's 404. A
refusal is now never kept, and the wrong key gets the cluster's own 401. Real HTTP on loopback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.multicluster.clusters import ClusterSpec

GOOD = {"authorization": "Bearer good"}
BAD = {"authorization": "Bearer bad"}


class KeyedStore(ResponsesStore):
    """A cluster's gateway in front of vLLM with ``--api-key good``: 401 for any other key."""

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("authorization") != GOOD["authorization"]:
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await super()._answer(request)

    async def _retrieve(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("authorization") != GOOD["authorization"]:
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await super()._retrieve(request)


async def test_a_wrong_keys_lookup_does_not_hide_an_id_from_the_right_key(
    global_gateway: Callable[..., Any],
) -> None:
    async with serving(KeyedStore("s0"), KeyedStore("s1")) as stores, aiohttp.ClientSession() as s:
        specs = [ClusterSpec("a", gateway=stores[0].address), ClusterSpec("b", gateway=stores[1].address)]
        gw = await global_gateway(*specs)
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        for i in range(2):  # (round robin: one made in each cluster)
            async with s.post(url, data=orjson.dumps({"model": "m", "input": f"q{i}"}), headers=GOOD) as r:
                assert r.status == 200, await r.read()
                rid = orjson.loads(await r.read())["id"]
                if rid in stores[1].made:
                    kept_in_b = rid
        gw = await global_gateway(*specs)  # restarted: it knows no id
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        async with s.get(f"{url}/{kept_in_b}", headers=BAD) as r:
            assert r.status == 401, await r.read()
        async with s.get(f"{url}/{kept_in_b}", headers=GOOD) as r:
            assert r.status == 200, await r.read()
            assert orjson.loads(await r.read())["id"] == kept_in_b
