"""rev-fixqa25 R4 (design, documented cost): since fixqa25 every cluster 504 is the client's answer. But
``kvgate serve`` marks which 504s were written: ``upstream_timeout`` (written to a model server, waited:
qa25 F4's case, must not be resent) vs ``request_timeout`` in a 504 *head* (its flow-control queue held the
request to its requestTimeoutSeconds, ``QueueTimeoutError``; or the bound passed before a server was
reached, ``DeadlinePassed``; or no attempt was left with the bound spent): nothing written by that
attempt, nothing running. Such a 504 is the cluster's overload signal, and failing over is what the global
gateway is for (it did so before fixqa25). The hub could tell them apart from the 504's small JSON body
(``error.code``), as QA's suggestion said ("at least one with code: upstream_timeout").

East answers ``504 request_timeout`` (as ``kvgate serve`` does when its queue held the request to the
bound), west is idle: the client should get west's 200. Real HTTP on loopback, ephemeral ports. The guard
beside it: Envoy's own 504 (plain text "upstream request timeout": its route timeout, after it wrote the
request or while it waited for a connection, which the hub cannot tell apart) and a JSON 504 with another
code stay the client's answer, their bodies relayed as they came, and west is sent nothing."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway

pytestmark = pytest.mark.asyncio


async def _app(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def _west_answers(east: web.Response) -> tuple[int, str | None, str, int]:
    """East answers ``east``, west 200: the client's status, cluster, body, and the requests west got."""
    west_got: list[bytes] = []

    async def east_h(_r: web.Request) -> web.Response:
        return east

    async def west(r: web.Request) -> web.Response:
        west_got.append(await r.read())
        choice = {"index": 0, "text": "ok", "finish_reason": "stop"}
        return web.json_response({"id": "c", "object": "text_completion", "model": "m", "choices": [choice]})

    e_runner, e_port = await _app(east_h)
    w_runner, w_port = await _app(west)
    clusters = (ClusterSpec("east", gateway=f"127.0.0.1:{e_port}", priority=0),
                ClusterSpec("west", gateway=f"127.0.0.1:{w_port}", priority=1))  # fmt: skip
    gw = GlobalGateway(ClustersConfig(clusters), "active-passive", fetch=False, seed=1)
    await gw.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{gw.port}/v1/completions"
            async with http.post(url, data=json.dumps({"model": "m", "prompt": "x"})) as r:
                got = r.status, r.headers.get("x-kvgate-cluster"), await r.text()
        return got[0], got[1], got[2], len(west_got)
    finally:
        await gw.stop()
        await e_runner.cleanup()
        await w_runner.cleanup()


def _error(code: str) -> web.Response:
    why = "request timed out in the flow control queue (its requestTimeoutSeconds passed)"
    body = {"error": {"message": why, "type": "timeout", "param": None, "code": code}}
    return web.json_response(body, status=504)


async def test_a_clusters_queue_timeout_504_nothing_written_goes_to_the_next_cluster() -> None:
    got = await _west_answers(_error("request_timeout"))
    assert (got[0], got[1], got[3]) == (200, "west", 1), got


@pytest.mark.parametrize("kind", ["envoy", "upstream_timeout"])
async def test_any_other_504_stays_the_clients_answer(kind: str) -> None:
    if kind == "envoy":
        east, body = web.Response(status=504, text="upstream request timeout"), "upstream request timeout"
    else:
        east = _error(kind)
        body = east.text or ""
    got = await _west_answers(east)
    assert got == (504, "east", body, 0), got
