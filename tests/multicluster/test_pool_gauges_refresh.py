"""Review s17-qa M3: ``inference_pool_average_running_requests`` (the reference EPP's pool gauge) and the
``llm_d_epp_*`` / ``kvgate_pool_*`` gauges were set only when ``/v1/pool/aggregate`` was served: missing
from ``/metrics`` of ``kvgate serve`` and ``kvgate epp`` until a global gateway read an aggregate, then
frozen at that read. Now both doors refresh them with their other ``inference_pool_*`` gauges (``kvgate
serve``: at each ``/metrics`` scrape; ``kvgate epp``: every second). Pool names of their own: the gauges
live in the process-wide registry."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from prometheus_client import REGISTRY

from gateway.conftest import make_config, running_gateway
from kvgate.datalayer.store import EndpointStore
from kvgate.extproc.cli import _every_second
from kvgate.extproc.context import build_epp_director
from kvgate.multicluster.export import aggregate_source


async def test_serve_exports_the_pool_gauges_at_each_scrape_without_an_aggregate_read() -> None:
    cfg = make_config(["127.0.0.1:1", "127.0.0.1:2"], extra={"listen": {"adminPort": 0}})
    cfg.pools[0].name = "qa17m3"
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{gw.admin_port}/metrics"
        for running in (4, 2):  # followed, not frozen
            for ep in gw.pools[0].endpoints():
                ep.metrics.updated_at = time.monotonic()
                ep.metrics.running_requests = running
            async with http.get(url) as r:
                text = await r.text()
            assert f'inference_pool_average_running_requests{{name="qa17m3"}} {running:.1f}' in text, running
            assert f'llm_d_epp_average_running_requests{{name="qa17m3"}} {running:.1f}' in text
            assert 'kvgate_pool_headroom{name="qa17m3"}' in text


async def test_epp_refreshes_the_pool_gauges_every_second_for_a_static_pool() -> None:
    store = EndpointStore.from_addresses(["127.0.0.1:1"], pool="qa17m3e")
    director = build_epp_director(None, store, policy="kvgate")
    source = aggregate_source("qa17m3e", store.all, director)

    class Server:
        async def refresh_health(self) -> None:
            pass

    def value() -> float | None:
        return REGISTRY.get_sample_value("inference_pool_average_running_requests", {"name": "qa17m3e"})

    (ep,) = store.all()
    ep.metrics.updated_at = time.monotonic()
    ep.metrics.running_requests = 5
    stop = asyncio.Event()
    task = asyncio.create_task(_every_second(director, Server(), stop, None, source))  # type: ignore[arg-type]
    try:
        for _ in range(1500):  # (30 s: 2 s before)
            if value() is not None:
                break
            await asyncio.sleep(0.02)
        assert value() == 5.0
    finally:
        stop.set()
        await task
