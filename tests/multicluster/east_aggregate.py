"""Cluster ``east``'s pool aggregate answered by a test's handler (real HTTP on loopback) and an aggregate
fetcher of it alone, whose rounds run when the test asks (``start``, ``refresh``): the fetcher log tests'
set-up (qa34b, rev-e34)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from gateway.handler_server import serve_app
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.state import ClusterState


@asynccontextmanager
async def east_fetching(
    handle: Callable[[web.Request], Awaitable[web.Response]],
) -> AsyncIterator[tuple[ClusterState, Fetcher, str]]:
    """``handle`` answers ``GET /v1/pool/aggregate`` on 127.0.0.1:0; yields east's state, its fetcher (its
    interval an hour: no round of its own) and the URL; the fetcher stopped and the server gone after."""
    app = web.Application()
    app.router.add_get("/v1/pool/aggregate", handle)
    runner, port = await serve_app(app)
    url = f"http://127.0.0.1:{port}/v1/pool/aggregate"
    st = ClusterState(ClusterSpec("east", aggregate=url, gateway="127.0.0.1:9"))
    fetcher = Fetcher(lambda: [st], interval_s=3600, timeout_s=10.0)
    try:
        yield st, fetcher, url
    finally:
        await fetcher.stop()
        await runner.cleanup()
