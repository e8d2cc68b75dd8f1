"""``kvgate serve`` with ``pendingHolders`` (issue #16, fam34): a replica holds a pick's blocks in the prefix
index once its answer's first token came (streamed, or a whole reply that succeeded), and a replica that
fails the request leaves no holder. Real HTTP on loopback (a simulated replica; a server that answers
503)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web

from kvgate.config.gateway import parse_gateway_config
from kvgate.gateway.pools import build_pool
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.framework import CycleState
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer, prefix_match
from kvgate.scheduling.types import InferenceRequest
from kvgate.sim.server import Replica, ReplicaConfig

POLICIES = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "policies"
PROMPT = "the tenant's long system prompt, say " * 40


async def _held_after(port: int, stream: bool) -> tuple[int, int]:
    """(blocks of the prompt's head the index records the replica holding, picks still pending) once
    the gateway has finished the request."""
    cfg = parse_gateway_config(
        {
            "listen": {"host": "127.0.0.1", "port": 0},
            "pools": [
                {
                    "name": "p",
                    "endpoints": [f"127.0.0.1:{port}"],
                    "models": ["sim-model"],
                    "endpointPickerConfigFile": "kvgate-pending-holders.yaml",
                }
            ],
        },
        base_dir=str(POLICIES),
    )
    pools = [build_pool(p) for p in cfg.pools]
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    try:
        d = pools[0].director
        scorer = next(p for p in d.handle.plugins.values() if isinstance(p, PrefixCacheScorer))
        assert scorer.pending_holders
        body = {"model": "sim-model", "prompt": PROMPT + "q1", "max_tokens": 2, "stream": stream}
        url = f"http://127.0.0.1:{gw.port}/v1/completions"
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as resp:
            await resp.read()
        # The gateway finishes its accounting just after writing the reply: wait for that state.
        ep = d.store.all()[0]
        for _ in range(1500):
            if ep.inflight.requests == 0:
                break
            await asyncio.sleep(0.02)
        assert ep.inflight.requests == 0, "the request was never finished"
        cycle = CycleState(InferenceRequest("probe", "sim-model", prompt_text=PROMPT + "q2"), 0.0)
        scorer.prepare(cycle, d.store.all())
        m = prefix_match(cycle)
        assert m is not None and m.hashes
        return scorer.index.match(m.hashes, [ep.address])[0], len(scorer._pending)
    finally:
        await gw.stop(drain_timeout=1.0)


async def test_a_served_request_makes_its_replica_a_holder() -> None:
    replica = Replica(ReplicaConfig(model="sim-model", time_scale=50.0, seed=0), index=0)
    await replica.start()
    try:
        for stream in (True, False):
            held, pending = await _held_after(replica.port, stream)
            assert held == 23 and pending == 0, stream
    finally:
        await replica.stop()


async def test_a_replica_that_fails_the_request_is_no_holder() -> None:
    async def fail(_: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "overloaded", "type": "server_error"}}, status=503)

    app = web.Application()
    app.router.add_post("/v1/completions", fail)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for stream in (True, False):
            assert await _held_after(port, stream) == (0, 0), stream
    finally:
        await runner.cleanup()
