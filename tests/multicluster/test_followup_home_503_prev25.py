"""``kvgate serve --clusters``: a follow-up whose home cluster answers 503 (its gateway draining, its pods
busy) or 429 gets that status with its Retry-After, not another cluster's 404 "Response ... not found"
(the stored response lives in the home cluster's pod; review s24-rev-fix24b F4, prev25). A home cluster
that cannot be reached still passes the follow-up on (test_response_followups.py), and a first turn is
still retried elsewhere. Real HTTP on loopback: Responses stores as the clusters' gateways."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.multicluster.clusters import ClusterSpec


class DrainingStore(ResponsesStore):
    status = 0  # (0: answers; else this status, as a draining or busy cluster gateway)

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        if self.status:
            err = {"message": "draining", "type": "ServiceUnavailableError", "code": self.status}
            return web.json_response({"error": err}, status=self.status, headers={"Retry-After": "3"})
        return await super()._answer(request)


@pytest.mark.parametrize("status", [429, 503])
async def test_a_follow_ups_home_cluster_answer_reaches_the_client(
    global_gateway: Callable[..., Any], status: int
) -> None:
    async with serving(DrainingStore("s0"), DrainingStore("s1")) as stores:
        a, b = stores
        gw = await global_gateway(ClusterSpec("a", gateway=a.address), ClusterSpec("b", gateway=b.address))
        url = f"http://127.0.0.1:{gw.port}/v1/responses"
        async with aiohttp.ClientSession() as s:
            async with s.post(url, data=orjson.dumps({"model": "m", "input": "hi"})) as r:
                assert r.status == 200
                rid = orjson.loads(await r.read())["id"]
            home = next(st for st in stores if rid in st.made)
            home.status = status
            body = {"model": "m", "input": "more", "previous_response_id": rid}
            async with s.post(url, data=orjson.dumps(body)) as r:
                raw = await r.read()
                assert r.status == status, raw  # (main: 404 from the other cluster)
                assert r.headers.get("Retry-After") == "3"
            assert b"holds the response this follow-up names" in raw
            async with s.post(url, data=orjson.dumps({"model": "m", "input": "again"})) as r:
                assert r.status == 200, await r.read()  # (a first turn: the other cluster)
