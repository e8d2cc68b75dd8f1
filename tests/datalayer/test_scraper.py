"""MetricsScraper against real HTTP servers on loopback (small aiohttp apps serving /metrics pages)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from kvgate.datalayer.scraper import MetricsScraper, is_fresh
from kvgate.datalayer.store import EndpointStore, make_endpoint


class FakeServer:
    def __init__(self) -> None:
        self.page = 'vllm:num_requests_waiting{model_name="m"} 0\n'
        self.status = 200
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def _metrics(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.page, status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.address = f"127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[list[FakeServer]]:
    srv = [FakeServer() for _ in range(3)]
    for s in srv:
        await s.start()
    yield srv
    for s in srv:
        await s.stop()


async def test_scrape_all_and_engines(servers: list[FakeServer]) -> None:
    servers[
        0
    ].page = 'vllm:num_requests_waiting{model_name="m"} 4\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
    servers[1].page = 'sglang:num_queue_reqs{model_name="m"} 2\nsglang:token_usage 0.25\n'
    servers[2].status = 500
    store = EndpointStore(
        [
            make_endpoint(servers[0].address),
            make_endpoint(servers[1].address, engine="sglang"),
            make_endpoint(servers[2].address),
        ]
    )
    now = [10.0]
    scraper = MetricsScraper(store, clock=lambda: now[0])
    try:
        assert await scraper.scrape_all() == 2
    finally:
        await scraper.stop()
    a, b, c = (store.get(s.address) for s in servers)
    assert a is not None and b is not None and c is not None
    assert (a.metrics.waiting_queue_size, a.metrics.kv_cache_usage, a.metrics.updated_at) == (4, 0.5, 10.0)
    assert (b.metrics.waiting_queue_size, b.metrics.kv_cache_usage) == (2, 0.25)
    assert c.metrics.updated_at is None and scraper.stats[c.address].failed == 1
    assert is_fresh(a, 11.0) and not is_fresh(a, 12.5) and not is_fresh(c, 10.0)


async def test_background_loop_follows_store_changes(servers: list[FakeServer]) -> None:
    store = EndpointStore([make_endpoint(servers[0].address)])
    async with MetricsScraper(store, interval=0.01):
        await asyncio.sleep(0.15)
        assert servers[0].hits >= 3
        store.add(make_endpoint(servers[1].address))
        store.remove(servers[0].address)
        hits0 = servers[0].hits
        await asyncio.sleep(0.15)
        assert servers[1].hits >= 3
        assert servers[0].hits <= hits0 + 1  # its task was cancelled on removal
        servers[1].page = 'vllm:num_requests_waiting{model_name="m"} 7\n'
        await asyncio.sleep(0.05)
        ep = store.get(servers[1].address)
        assert ep is not None and ep.metrics.waiting_queue_size == 7


async def test_unreachable_endpoint_goes_stale() -> None:
    store = EndpointStore([make_endpoint("127.0.0.1:1")])  # nothing listens on port 1
    scraper = MetricsScraper(store, timeout=1.0)
    try:
        assert await scraper.scrape_all() == 0
    finally:
        await scraper.stop()
    ep = store.get("127.0.0.1:1")
    assert ep is not None and ep.metrics.updated_at is None
