"""``kvgate serve --clusters``' ``/readyz`` answers 503 ``draining`` from the stop's start (SIGTERM), as
``kvgate serve``'s: its data port refuses new connections then, so a readiness probe on the admin port must
stop sending clients there (review s19-qa L2: it said 200 ``ready`` through the whole drain)."""

from __future__ import annotations

import asyncio

import aiohttp

from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.serve import GlobalGateway
from multicluster.test_drain_connection_close import Held, _exchange, held  # noqa: F401 (the fixture)


async def _readyz(port: int) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as r:
        return r.status, await r.text()


async def test_clusters_readyz_is_503_draining_during_the_drain(held: Held) -> None:  # noqa: F811
    gw = GlobalGateway(
        ClustersConfig((ClusterSpec("c1", gateway=held.address),)), "round-robin", fetch=False, drain_s=5
    )
    await gw.start("127.0.0.1", 0, admin_port=0)
    assert gw.admin_port is not None
    stop: asyncio.Task[None] | None = None
    try:
        assert await _readyz(gw.admin_port) == (200, "ready")
        answering = asyncio.create_task(_exchange(gw.port))  # held in flight: the drain waits for it
        await asyncio.wait_for(held.arrived.wait(), 30)
        stop = asyncio.create_task(gw.stop())
        await asyncio.sleep(0.2)
        during = await _readyz(gw.admin_port)
        held.go.set()
        answer = await asyncio.wait_for(answering, 30)
    finally:
        held.go.set()
        if stop is None:
            await gw.stop()
        else:
            await asyncio.wait_for(stop, 30)
    assert during == (503, "draining"), during
    assert b"data: [DONE]" in answer, answer  # the stream in flight still completes
