"""Live: a Responses follow-up whose id's home the gateway's map no longer holds (displaced by newer ids
while its turn, read again and again, stays in the turns' LRU) goes to the replica that holds its stored
response, under load, not where the load and cost scorers would place it.

Before prev25 such a follow-up was placed by its prefix chain as one score among the others: with the
holder busy (its queue scraped from its own ``/metrics``, load from outside the gateway) the pick went to
the idle replica, and the simulator, as vLLM 0.32, answered 404 ``Response with id '...' not found``. Now
the kept turn says where it was made (``Turn.home``) and the follow-up is pinned there, as one whose home
is known."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from gateway.conftest import base_url, make_config, running_gateway
from kvgate.openai.responses import ResponseHomes
from kvgate.sim.server import Replica, ReplicaConfig

MODEL = "sim-model"
SYSTEM = "You answer in full sentences and keep the story going. " * 10


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json()


async def test_follow_up_with_a_lost_home_goes_to_its_busy_holder() -> None:
    # (one sequence at a time: the outside load below queues at the holder, as its /metrics shows)
    cfgs = [ReplicaConfig(model=MODEL, time_scale=20.0, seed=i, max_num_seqs=1) for i in range(2)]
    replicas = [Replica(c, index=i) for i, c in enumerate(cfgs)]
    for r in replicas:
        await r.start()
    load: list[asyncio.Task[Any]] = []
    try:
        addresses = [f"127.0.0.1:{r.port}" for r in replicas]
        cfg = make_config(addresses, models=(MODEL,), policy="kvgate")
        async with running_gateway(cfg, scrape=True) as gw, aiohttp.ClientSession() as session:
            assert gw.proxy is not None
            # The ids' map keeps only the latest id (as one that newer ids displaced); the turns keep all.
            gw.proxy.responses = ResponseHomes(max_entries=1)
            url = base_url(gw) + "/v1/responses"
            firsts: list[dict[str, Any]] = []
            for i in range(5):  # (the fifth only displaces the fourth's home)
                body = {
                    "model": MODEL,
                    "instructions": f"Tenant {i}. {SYSTEM}",
                    "input": f"Session {i}: tell me a story.",
                    "max_output_tokens": 8,
                }
                status, doc = await _post(session, url, body)
                assert status == 200, doc
                firsts.append(doc)
            firsts.pop()
            assert all(gw.proxy.responses.home(d["id"]) is None for d in firsts)
            held = {rid: r for r in replicas for rid in r._stored}
            # The conversations on replica 0, its holder (the first turns went wherever the pick chose).
            mine = [(i, d) for i, d in enumerate(firsts) if held[d["id"]] is replicas[0]]
            if not mine:  # (all on replica 1: the roles swap)
                replicas.reverse()
                addresses.reverse()
                mine = list(enumerate(firsts))
            holder, other = addresses

            # Load from outside the gateway on the holder: long generations, one running, the rest queued.
            direct = f"http://{holder}/v1/completions"
            busy = {"model": MODEL, "prompt": "load " * 50, "max_tokens": 2000, "ignore_eos": True}
            load = [asyncio.ensure_future(_post(session, direct, busy)) for _ in range(8)]
            ep = next(e for e in gw.pools[0].endpoints() if e.address == holder)
            deadline = time.monotonic() + 20.0
            while ep.metrics.waiting_queue_size < 5:  # (scraped: the gateway sees the holder busy)
                assert time.monotonic() < deadline, "the holder's queue never showed in its metrics"
                await asyncio.sleep(0.05)

            seen: list[str] = []
            director = gw.proxy.pools[0].director
            real = director.on_dispatched

            def on_dispatched(ireq: Any, endpoint: Any) -> None:
                seen.append(endpoint.address)
                real(ireq, endpoint)

            director.on_dispatched = on_dispatched
            bodies = [
                {
                    "model": MODEL,
                    "instructions": f"Tenant {i}. {SYSTEM}",
                    "previous_response_id": first["id"],
                    "input": "And then what happened?",
                    "max_output_tokens": 4,
                }
                for i, first in mine
            ]
            follow = [asyncio.ensure_future(_post(session, url, b)) for b in bodies]
            deadline = time.monotonic() + 20.0
            while len(seen) < len(follow) and not all(f.done() for f in follow):
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.02)
            for t in load:  # (placed: the outside load may go, its requests aborted at the holder)
                t.cancel()
            for (_, first), (status, doc) in zip(mine, await asyncio.gather(*follow), strict=True):
                assert status == 200, (status, doc, seen)
                assert doc["usage"]["input_tokens"] > first["usage"]["input_tokens"]
            assert set(seen) == {holder}, (seen, other)
    finally:
        for t in load:
            t.cancel()
        await asyncio.gather(*load, return_exceptions=True)
        for r in replicas:
            await r.stop()
