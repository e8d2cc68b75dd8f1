"""A /metrics server for tests that go through MetricsScraper (vLLM page, KV cache 128 x 64 = 8,192
tokens). ``during`` runs while the GET is being answered, *before* the page is rendered (the server's
state changed during the GET and the page shows the state after the change)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

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
