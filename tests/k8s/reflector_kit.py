"""Helpers shared by the reflector staleness tests (test_staleness*.py, test_k8s_review_s14_fixes.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from kvgate.k8s.apiserver import ApiServerDouble
from kvgate.k8s.client import KubeClient
from kvgate.k8s.reflector import Reflector
from kvgate.k8s.resources import POD


async def serve(handle: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[web.AppRunner, str]:
    """An API server that answers every GET with ``handle``, on a free loopback port: (runner, its URL)."""
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def until(cond: Callable[[], bool], within_s: float = 30.0) -> None:
    """Waits (on the loop's own time, not the reflector's injected clock) until ``cond()`` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within_s
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


def create_pod(double: ApiServerDouble) -> None:
    """One pod ("a" in "default") on the API-server double."""
    double.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "default"},
                   "spec": {"containers": [{"name": "c", "image": "x"}]}})  # fmt: skip


@contextlib.asynccontextmanager
async def pod_reflector(double: ApiServerDouble, now: list[float], **kw: Any) -> AsyncIterator[Reflector]:
    """One pod on ``double`` and a started reflector of the default namespace's pods (clock ``now[0]``,
    seed 1, ``kw`` to the reflector); stopped and its client closed at the end."""
    create_pod(double)
    client = await KubeClient.connect(server=double.url)
    r = Reflector(client, POD, namespace="default", clock=lambda: now[0], seed=1, **kw)
    r.start()
    try:
        yield r
    finally:
        await r.stop()
        await client.close()
