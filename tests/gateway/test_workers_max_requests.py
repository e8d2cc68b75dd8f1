"""Flow control's queue limits under ``kvgate serve --workers N`` are per worker, as documented next to
``maxRequests`` / ``maxBytes`` (docs/flowcontrol.md; review s20-qa L3): each worker's own queue holds at
most ``maxRequests``, so the fleet holds at most N times it, and a request a worker cannot queue is 429."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gateway import drain_kit, workers_kit


async def test_max_requests_bounds_each_workers_queue(backends, tmp_path):
    (b,) = await backends(1)
    b.answer_delay = 30.0  # the one running request holds the pool: every other one queues or is refused
    cfg = drain_kit.flow_controlled_config(tmp_path, b.address, "maxRequests: 2, defaultRequestTTL: 30s")
    body = orjson.dumps({"model": "m", "prompt": "x", "max_tokens": 2})
    async with (
        workers_kit.serve_workers("--config", str(cfg), n=2) as (_, port, admin),
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
    ):

        async def one() -> int:
            async with s.post(f"http://127.0.0.1:{port}/v1/completions", data=body) as r:
                await r.read()
                return r.status

        sent = [asyncio.create_task(one()) for _ in range(16)]  # a new connection each: spread by the kernel
        try:
            refused: list[int] = []
            for _ in range(100):  # until the 429s have come (16 - 1 or 2 running - at most 2 x 2 queued)
                refused = [t.result() for t in sent if t.done()]
                if len(refused) >= 10:
                    break
                await asyncio.sleep(0.1)
            async with s.get(f"http://127.0.0.1:{admin}/metrics") as r:
                text = await r.text()
        finally:
            for t in sent:
                t.cancel()
            await asyncio.gather(*sent, return_exceptions=True)
    queued = {
        smp.labels["worker"]: smp.value
        for fam in text_string_to_metric_families(text)
        if fam.name == "inference_extension_flow_control_queue_size"
        for smp in fam.samples
    }
    assert set(queued) == {"0", "1"}, queued
    assert all(v <= 2 for v in queued.values()), f"a worker queued more than maxRequests: 2: {queued}"
    assert refused and set(refused) == {429}, refused
    # 16 sent, one running (two where both workers took the free slot at once: docs/flowcontrol.md): what
    # no worker queued or ran was refused.
    assert 14 - sum(queued.values()) <= len(refused) <= 15 - sum(queued.values()), (queued, refused)
