"""Review s23-rev-hub23 F1: a reload removing a cluster's ``aggregate:`` drops what the last fetch left
(``ClusterState.respec``), but a fetch already in flight then (it read ``st.spec.aggregate`` at the round's
start) landed after the reload and set it all again: the snapshot and ``fetched_at`` back on a cluster
nothing fetches any more, so a later hang was marked against that time for good (the bug hub23's respec
fixed, back through the race); a failing one set ``fetch_error`` there. Now the answer is dropped unless
the cluster's spec still has the URL that was fetched (a changed URL too: the answer is the old one's).

The real ``Fetcher`` and ``ClusterDirector.apply``; a loopback aggregate server that holds its answer until
the reload is done (slow, not hung: it answers within the fetch's time-out). Adapted from the review's test.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gateway.handler_server import serve_app
from kvgate.datalayer.aggregate import PoolAggregate, encode
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.hub import ClusterDirector

BODY = encode(PoolAggregate(name="p", snapshot_time=1.0, ready_endpoints=1, total_endpoints=1))


@pytest.mark.parametrize(
    ("status", "to"),
    [(200, None), (500, None), (200, "other"), (200, "same")],
    ids=["answer-removed", "error-removed", "answer-url-changed", "answer-no-change"],
)
async def test_a_fetch_in_flight_at_a_reload_lands_on_its_url_only(status: int, to: str | None) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def handle(_req: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(body=BODY, status=status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/aggregate", handle)
    runner, port = await serve_app(app, shutdown_timeout=0.1)
    url = f"http://127.0.0.1:{port}/aggregate"
    director = ClusterDirector(ClustersConfig((ClusterSpec("east", gateway="127.0.0.1:10", aggregate=url),)),
                               "active-passive", seed=0)  # fmt: skip
    fetcher = Fetcher(director.state_list, interval_s=3600, timeout_s=10.0)
    fetch = asyncio.ensure_future(fetcher.start())  # (its first round, in flight until released)
    try:
        async with asyncio.timeout(10):
            await arrived.wait()
        new_url = {None: None, "other": url + "?v=2", "same": url}[to]
        director.apply(ClustersConfig((ClusterSpec("east", gateway="127.0.0.1:10", aggregate=new_url),)))
        st = director.states["east"]
        assert st.fetched_at is None and st.fetch_error is None
        release.set()
        async with asyncio.timeout(10):
            await fetch
        if to == "same":  # (a guard: the answer of the URL still configured lands)
            assert st.fetched_at is not None and st.aggregate is not None
            return
        assert st.fetched_at is None and st.aggregate is None, "a fetch of the old URL set its snapshot again"
        assert st.fetch_error is None, "a fetch of the old URL set its error"
    finally:
        release.set()
        await fetcher.stop()
        await runner.cleanup()
