"""kvgate's own stack end to end: openai SDK -> kvgate (kvgate policy, live scraping) -> simulated vLLM."""

from __future__ import annotations

import asyncio

import openai

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.sim.server import Replica, ReplicaConfig


async def test_openai_sdk_through_kvgate_to_simulated_replicas():
    replicas = [Replica(ReplicaConfig(model="sim-model", time_scale=50.0, seed=i), index=i) for i in range(2)]
    for r in replicas:
        await r.start()
    try:
        cfg = make_config([f"127.0.0.1:{r.port}" for r in replicas], models=("sim-model",), policy="kvgate")
        async with running_gateway(cfg, scrape=True) as gw:
            client = openai.AsyncOpenAI(base_url=base_url(gw) + "/v1", api_key="k", max_retries=0)
            shared = "You are a helpful assistant. " * 20

            async def one(i: int) -> int:
                if i % 3 == 0:
                    c = await client.completions.create(
                        model="sim-model", prompt=shared + str(i), max_tokens=8
                    )
                    assert c.model == "sim-model" and c.usage is not None
                    return c.usage.completion_tokens
                stream = await client.chat.completions.create(
                    model="sim-model",
                    messages=[{"role": "user", "content": shared + str(i)}],
                    max_tokens=8,
                    stream=True,
                )
                n = 0
                async for chunk in stream:
                    assert chunk.usage is None  # the usage chunk kvgate asked for is not shown
                    n += sum(1 for ch in chunk.choices if ch.delta.content)
                return n

            tokens = await asyncio.gather(*(one(i) for i in range(24)))
            assert all(t > 0 for t in tokens)
            await client.close()
            # The in-flight accounting is exact again once everything finished.
            for ep in gw.pools[0].endpoints():
                assert ep.inflight.requests == 0
                assert ep.inflight.pending_prefill_tokens == 0 and ep.inflight.decoding == 0
            # Live scraping reached the simulated servers (metrics have a timestamp).
            assert all(ep.metrics.updated_at is not None for ep in gw.pools[0].endpoints())
    finally:
        for r in replicas:
            await r.stop()
