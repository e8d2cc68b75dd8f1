"""A /metrics server for tests that go through MetricsScraper (vLLM page, KV cache 128 x 64 = 8,192
tokens). ``during`` runs while the GET is being answered, *before* the page is rendered (the server's
state changed during the GET and the page shows the state after the change)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from kvgate.config.policies import policy_config
from kvgate.datalayer.endpoint import Endpoint
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.flowcontrol.saturation import UtilizationDetector
from kvgate.scheduling.framework import PluginHandle

PAGE = (
    'vllm:num_requests_waiting{model_name="m"} %d\n'
    'vllm:num_requests_running{model_name="m"} %d\n'
    'vllm:kv_cache_usage_perc{model_name="m"} %s\n'
    'vllm:cache_config_info{block_size="128",num_gpu_blocks="64"} 1\n'
)


class Server:
    def __init__(self) -> None:
        self.page: Callable[[], str] = lambda: PAGE % (0, 0, "0.05")
        self.during: Callable[[], None] = lambda: None
        self.runner: web.AppRunner | None = None
        self.address = ""

    async def _metrics(self, request: web.Request) -> web.Response:
        self.during()
        return web.Response(text=self.page())

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.address = f"127.0.0.1:{self.runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def one_endpoint(address: str) -> tuple[EndpointStore, Endpoint]:
    """A store of one endpoint, at ``address``, and that endpoint."""
    store = EndpointStore([make_endpoint(address)])
    ep = store.get(address)
    assert ep is not None
    return store, ep


async def scrape_once(ep: Endpoint, store: EndpointStore) -> None:
    """One scrape of ``ep`` at t=0 (the scraper stopped after it); its page explained the gateway's own
    load."""
    scraper = MetricsScraper(store, clock=lambda: 0.0)
    try:
        assert await scraper.scrape(ep)
    finally:
        await scraper.stop()
    assert ep.metrics.own_explained


def kvgate_detector() -> UtilizationDetector:
    """The ``kvgate`` policy's saturation detector (it carries a page forward with its own load)."""
    spec = policy_config("kvgate").saturation_detector
    assert spec is not None and spec.type == "utilization-detector"
    d = UtilizationDetector.create("u", spec.params(), PluginHandle())
    assert d.own_load_staleness > 0
    return d
