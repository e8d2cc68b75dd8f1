"""End to end through kvgate serve's gateway: with deploy/examples/predicted-latency.yaml, the picker
learns from the streamed responses that one simulated replica is faster and sends it most requests.
Real HTTP on loopback, real simulated vLLM replicas of unequal speed; only counts are asserted."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.shipped_policy import EXAMPLES, serve_policy
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.plugins.predicted_latency import PredictedLatencyScorer
from kvgate.sim.server import Replica, ReplicaConfig


def _served(replicas: list[Replica]) -> list[int]:
    return [sum(r.counters.finished.values()) for r in replicas]


async def test_the_scorer_learns_to_prefer_the_faster_replica() -> None:
    # The slow replica runs the same engine profile 200x slower: TTFT and every decode step 200x longer.
    # Its requests take ~0.2 s of wall time (the fast one's a few ms): a gap no scheduling stall of a
    # loaded CI machine on a fast request's first samples comes near (at 1.0, ~0.05 s, one could).
    speeds = (50.0, 0.25)
    replicas = [
        Replica(ReplicaConfig(model="sim-model", time_scale=s, seed=i), index=i) for i, s in enumerate(speeds)
    ]
    for r in replicas:
        await r.start()
    gw: GatewayServer | None = None
    try:
        ports = [r.port for r in replicas]
        gw, pools = await serve_policy(ports, "predicted-latency.yaml", base_dir=EXAMPLES, scrape=True)
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as http:
            for i in range(40):
                body = {
                    "model": "sim-model",
                    "prompt": f"{i} tell me about item {i}. " + "words " * 300,
                    "max_tokens": 6,
                    "stream": True,
                }
                if i == 20:
                    mid = _served(replicas)
                async with http.post(url, json=body) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
        end = _served(replicas)
        assert sum(end) == 40
        assert min(mid) >= 1, mid  # both were tried while unknown
        last = [e - m for e, m in zip(end, mid, strict=True)]
        assert last[0] >= 16, (mid, end)  # the fast replica got most of the last 20
        scorer = next(
            p for p in pools[0].director.handle.plugins.values() if isinstance(p, PredictedLatencyScorer)
        )
        # Every pick closed by its finish. The gateway runs on_finished just after it writes the stream's
        # end, which the client can read first: give it a moment, not a pass.
        for _ in range(100):
            if scorer.predictor.pending() == 0:
                break
            await asyncio.sleep(0.02)
        assert scorer.predictor.pending() == 0
    finally:
        if gw is not None:
            await gw.stop(drain_timeout=1.0)
        for r in replicas:
            await r.stop()
