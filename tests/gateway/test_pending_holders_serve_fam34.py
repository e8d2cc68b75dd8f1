"""``kvgate serve`` with ``pendingHolders`` (issue #16, fam34): a replica holds a pick's blocks in the prefix
index once its answer's first token came (streamed, or a whole reply that succeeded), and a replica that
fails the request leaves no holder. Real HTTP on loopback (a simulated replica; a server that answers
503)."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from gateway.handler_server import serve_handler
from gateway.shipped_policy import prefix_scorer, serve_policy
from kvgate.scheduling.framework import CycleState
from kvgate.scheduling.plugins.prefix_cache import prefix_match
from kvgate.scheduling.types import InferenceRequest
from kvgate.sim.server import Replica, ReplicaConfig

PROMPT = "the tenant's long system prompt, say " * 40


async def _held_after(port: int, stream: bool) -> tuple[int, int]:
    """(blocks of the prompt's head the index records the replica holding, picks still pending) once
    the gateway has finished the request."""
    gw, pools = await serve_policy([port], "kvgate-pending-holders.yaml")
    try:
        d = pools[0].director
        scorer = prefix_scorer(pools[0])
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

    runner, port = await serve_handler(fail)
    try:
        for stream in (True, False):
            assert await _held_after(port, stream) == (0, 0), stream
    finally:
        await runner.cleanup()
