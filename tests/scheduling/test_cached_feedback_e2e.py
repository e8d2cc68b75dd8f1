"""End to end through kvgate serve's gateway: a simulated replica's reported cached tokens
(``usage.prompt_tokens_details``) reach the prefix index (``cachedTokensFeedback``). Real HTTP on loopback;
the replica's prefix cache is emptied (``/reset_prefix_cache``, as vLLM's) behind the index's back."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.shipped_policy import prefix_scorer, serve_policy
from kvgate.gateway.server import GatewayServer
from kvgate.sim.server import Replica, ReplicaConfig


async def _forgotten_after(reset: bool) -> int:
    replica = Replica(ReplicaConfig(model="sim-model", time_scale=50.0, seed=0), index=0)
    await replica.start()
    gw: GatewayServer | None = None
    try:
        gw, pools = await serve_policy([replica.port], "kvgate-cached-feedback.yaml", scrape=True)
        scorer = prefix_scorer(pools[0])
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as http:

            async def send(prompt: str) -> None:
                body = {"model": "sim-model", "prompt": prompt, "max_tokens": 2}
                async with http.post(url, json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    assert "prompt_tokens_details" in (await resp.json())["usage"]
                # The gateway finishes its accounting just after writing the reply: wait for it.
                for _ in range(250):
                    if not scorer._running:
                        return
                    await asyncio.sleep(0.02)
                raise AssertionError("the pick was never finished")

            await send("the first tenant's system prompt. " + "alpha bravo " * 200 + "q1")
            await send("the other tenant's system prompt. " + "delta echo " * 200 + "q1")
            if reset:
                async with http.post(f"http://127.0.0.1:{replica.port}/reset_prefix_cache") as resp:
                    assert resp.status == 200, await resp.text()
            await send("the other tenant's system prompt. " + "delta echo " * 200 + "q2")
        return scorer.forgotten
    finally:
        if gw is not None:
            await gw.stop(drain_timeout=1.0)
        await replica.stop()


async def test_a_replica_that_lost_its_cache_makes_the_index_forget() -> None:
    assert await _forgotten_after(reset=False) == 0  # the replica had what the index claimed
    # It had nothing: the first tenant's prefix, recorded before the one it lacked, is forgotten.
    assert await _forgotten_after(reset=True) > 0
