"""hub23's QA of the hub EPP: with every cluster's fresh aggregate showing no ready endpoint, the hub's
picks are 503 (the kvgate policy names no such cluster: ``NoCapacityError``), but its ``/readyz`` (metrics
port) stayed 200 and its gRPC readiness SERVING: readiness read the store's endpoints (the clusters'
gateways), which nothing marks unhealthy. docs/multicluster.md says "200 while some cluster gateway can
be picked, else 503". Now readiness asks the director as ``kvgate serve --clusters``'s ``/readyz`` asks its
router (``ClusterDirector.ready``: would the policy name a cluster).

The real ``kvgate epp --clusters`` subprocess; its cluster's aggregate from a loopback server, whose ready
count the test turns; ``/readyz`` polled up to a deadline; a pick over ext_proc gRPC."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from extproc.test_cli import _launch, _stop
from gateway.handler_server import serve_app
from kvgate.datalayer.aggregate import PoolAggregate, encode
from multicluster.hub_pick import pick_once


async def _readyz(port: int, status: int) -> None:
    url = f"http://127.0.0.1:{port}/readyz"
    async with aiohttp.ClientSession() as http, asyncio.timeout(20):
        while True:
            async with http.get(url) as r:
                if r.status == status:
                    return
            await asyncio.sleep(0.1)


async def test_readyz_is_503_while_no_cluster_can_be_picked(tmp_path: Path) -> None:
    ready = [0]

    async def aggregate(_r: web.Request) -> web.Response:
        agg = PoolAggregate(name="p", snapshot_time=time.time(), ready_endpoints=ready[0], total_endpoints=2)
        return web.Response(body=encode(agg), content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/pool/aggregate", aggregate)
    runner, port = await serve_app(app)
    f = tmp_path / "clusters.yaml"
    f.write_text(f"refresh_s: 0.2\nclusters:\n- name: east\n  gateway: 127.0.0.1:9\n"
                 f"  aggregate: http://127.0.0.1:{port}/v1/pool/aggregate\n")  # fmt: skip
    proc, ports = await _launch("--clusters", str(f), "--plaintext")
    try:
        body = orjson.dumps({"model": "m", "prompt": "hi"})
        out = await pick_once(ports["grpc"], {":method": "POST", ":path": "/v1/completions"}, body)
        assert out.status == 503, out  # (east's fresh aggregate: no ready endpoint)
        await _readyz(ports["metrics"], 503)  # (fails before: 200 for good)
        ready[0] = 2
        await _readyz(ports["metrics"], 200)
    finally:
        assert await _stop(proc) == 0
        await runner.cleanup()
