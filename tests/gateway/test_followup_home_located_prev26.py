"""Live, the real simulator (as vLLM 0.32 with ``VLLM_ENABLE_RESPONSES_API_STORE=1``: each replica keeps
its own responses and answers ``GET /v1/responses/{id}``): a Responses follow-up (``previous_response_id``)
or lookup whose id's home the gateway does not know, or whose home is down, never ends in the 404 of a
replica that never stored the response (prev26, the session-25 closing note's "left undone").

- The gateway restarted between turns (its maps empty): the follow-ups and lookups are asked of the
  replicas (``gateway.locate``) and go to the one that keeps each id. Before, they were placed by the
  picker (here round robin) and half of them reached the other replica's 404.
- The home busy and slow, the gateway restarted: still its home (the ask is answered off the engine),
  not the idle replica the load scorer prefers (before: 404 there).
- The home killed: 503 with ``Retry-After`` (nothing else holds it), not a retry at the other replica
  (before: its 404).
- The home's answer to the ask slower than the ask's bound: 503 with ``Retry-After``, not a 404.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from aiohttp import web

from gateway.conftest import base_url, make_config, running_gateway
from gateway.handler_server import serving
from gateway.responses_backend import ResponsesStore
from kvgate.sim.server import Replica, ReplicaConfig

MODEL = "sim-model"


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any, str]:
    async with session.post(url, json=body) as resp:
        return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def _replicas(n: int = 2, **kw: Any) -> list[Replica]:
    out = [Replica(ReplicaConfig(model=MODEL, time_scale=20.0, seed=i, **kw), index=i) for i in range(n)]
    for r in out:
        await r.start()
    return out


async def _firsts(session: aiohttp.ClientSession, url: str, n: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        body = {"model": MODEL, "input": f"Session {i}: tell me a story.", "max_output_tokens": 4}
        status, doc, _ = await _post(session, url, body)
        assert status == 200, doc
        docs.append(doc)
    return docs


async def test_follow_ups_and_lookups_after_a_gateway_restart_reach_their_homes() -> None:
    replicas = await _replicas()
    try:
        addresses = [f"127.0.0.1:{r.port}" for r in replicas]
        cfg = make_config(addresses, models=(MODEL,))  # (round robin: spreads the first turns)
        async with aiohttp.ClientSession() as session:
            async with running_gateway(cfg) as gw:
                firsts = await _firsts(session, base_url(gw) + "/v1/responses", 8)
            home = {rid: i for i, r in enumerate(replicas) for rid in r._stored}
            # (grouped by home: a picker that does not know the homes sends half of them elsewhere)
            ordered = sorted(firsts, key=lambda d: home[d["id"]])
            assert {home[d["id"]] for d in ordered} == {0, 1}
            async with running_gateway(cfg) as gw:  # restarted: it knows no id
                assert gw.proxy is not None
                url = base_url(gw) + "/v1/responses"
                for first in ordered:
                    body = {"model": MODEL, "input": "And then?", "previous_response_id": first["id"]}
                    status, doc, _ = await _post(session, url, body)
                    assert status == 200, (status, doc)
                    assert doc["id"] in replicas[home[first["id"]]]._stored  # (answered at its home)
                    assert doc["usage"]["input_tokens"] > first["usage"]["input_tokens"]
                for first in ordered:
                    async with session.get(f"{url}/{first['id']}") as r:  # a lookup: now known
                        assert r.status == 200 and (await r.json())["id"] == first["id"]
                rounds = gw.proxy.locator.rounds
                assert rounds == len(ordered)  # (each id asked once, then remembered)
            async with running_gateway(cfg) as gw:  # restarted again: a lookup first
                assert gw.proxy is not None
                url = base_url(gw) + "/v1/responses"
                for first in ordered:
                    async with session.get(f"{url}/{first['id']}") as r:
                        assert r.status == 200, await r.text()
                        assert (await r.json())["id"] == first["id"]
                # An id no replica keeps: asked, then the replica's own 404 (true now), and not asked again
                # within ``MISS_TTL_S``.
                for _ in range(2):
                    body = {"model": MODEL, "input": "x", "previous_response_id": "resp_nowhere"}
                    status, doc, _ = await _post(session, url, body)
                    assert status == 404 and "not found" in doc["error"]["message"], doc
                assert gw.proxy.locator.rounds == len(ordered) + 1
    finally:
        for r in replicas:
            await r.stop()


async def test_follow_ups_to_a_busy_slow_home_after_a_restart_wait_for_it() -> None:
    # (one sequence at a time, each step slow: the outside load queues at the home, as its /metrics shows)
    replicas = await _replicas(max_num_seqs=1)
    load: list[asyncio.Task[Any]] = []
    try:
        addresses = [f"127.0.0.1:{r.port}" for r in replicas]
        cfg = make_config(addresses, models=(MODEL,))
        async with aiohttp.ClientSession() as session, running_gateway(cfg) as gw:
            firsts = await _firsts(session, base_url(gw) + "/v1/responses", 4)
            mine = [d for d in firsts if d["id"] in replicas[0]._stored]
            holder, other = addresses
            if not mine:
                mine, holder, other = firsts, other, holder
            busy = next(r for r in replicas if f"127.0.0.1:{r.port}" == holder)
            busy.faults.update({"slow_factor": 3.0})
            big = {"model": MODEL, "prompt": "load " * 50, "max_tokens": 2000, "ignore_eos": True}
            direct = f"http://{holder}/v1/completions"
            load = [asyncio.ensure_future(_post(session, direct, big)) for _ in range(8)]
            cfg = make_config(addresses, models=(MODEL,), policy="kvgate")
            async with running_gateway(cfg, scrape=True) as gw:  # restarted: it knows no id
                ep = next(e for e in gw.pools[0].endpoints() if e.address == holder)
                deadline = time.monotonic() + 20.0
                while ep.metrics.waiting_queue_size < 5:  # (scraped: the gateway sees the home busy)
                    assert time.monotonic() < deadline, "the home's queue never showed in its metrics"
                    await asyncio.sleep(0.05)
                url = base_url(gw) + "/v1/responses"
                bodies = [
                    {
                        "model": MODEL,
                        "input": "And then?",
                        "previous_response_id": d["id"],
                        "max_output_tokens": 2,
                    }
                    for d in mine
                ]
                seen: list[str] = []
                director = gw.pools[0].director
                real = director.on_dispatched

                def on_dispatched(ireq: Any, endpoint: Any) -> None:
                    seen.append(endpoint.address)
                    real(ireq, endpoint)

                director.on_dispatched = on_dispatched  # type: ignore[method-assign]
                follow = [asyncio.ensure_future(_post(session, url, b)) for b in bodies]
                # (placed: the outside load may go, its requests aborted at the home)
                deadline = time.monotonic() + 20.0
                while len(seen) < len(follow) and not all(f.done() for f in follow):
                    assert time.monotonic() < deadline, seen
                    await asyncio.sleep(0.02)
                for t in load:
                    t.cancel()
                for status, doc, _ in await asyncio.gather(*follow):
                    assert status == 200, (status, doc, seen)
                    assert doc["id"] in busy._stored
                assert set(seen) == {holder}, seen
    finally:
        for t in load:
            t.cancel()
        await asyncio.gather(*load, return_exceptions=True)
        for r in replicas:
            await r.stop()


async def test_a_follow_up_whose_home_was_killed_gets_503_not_another_replicas_404() -> None:
    replicas = await _replicas()
    try:
        addresses = [f"127.0.0.1:{r.port}" for r in replicas]
        cfg = make_config(addresses, models=(MODEL,))
        async with aiohttp.ClientSession() as session, running_gateway(cfg) as gw:
            url = base_url(gw) + "/v1/responses"
            firsts = await _firsts(session, url, 2)
            home = next(r for r in replicas if firsts[0]["id"] in r._stored)
            await home.stop()  # killed: its port refuses, its responses are gone with it
            for _ in range(2):  # (the second: its home may be marked down by then)
                body = {"model": MODEL, "input": "And then?", "previous_response_id": firsts[0]["id"]}
                status, doc, retry_after = await _post(session, url, body)
                assert status == 503 and retry_after == "1", (status, doc)
                assert doc["error"]["code"] == "upstream_unavailable"
    finally:
        for r in replicas:
            await r.stop()


async def test_a_home_too_slow_to_answer_the_ask_gets_503_not_a_404() -> None:
    # (its ask waits out ``LOCATE_S``, 2 s)
    stall = asyncio.Event()
    replicas = [Replica(ReplicaConfig(model=MODEL, time_scale=20.0, seed=i), index=i) for i in range(2)]
    real = replicas[0]._retrieve

    async def stalled(request: Any) -> Any:  # (its API server's loop busy: no answer in time)
        await stall.wait()
        return await real(request)

    replicas[0]._retrieve = stalled  # type: ignore[method-assign]
    try:
        for r in replicas:
            await r.start()
        addresses = [f"127.0.0.1:{r.port}" for r in replicas]
        cfg = make_config(addresses, models=(MODEL,))
        async with aiohttp.ClientSession() as session, running_gateway(cfg) as gw:
            url = base_url(gw) + "/v1/responses"
            body = {"model": MODEL, "input": "And then?", "previous_response_id": "resp_unknown"}
            status, doc, retry_after = await _post(session, url, body)
            assert status == 503 and retry_after == "1", (status, doc)
            assert "could not be asked" in doc["error"]["message"]
    finally:
        stall.set()
        for r in replicas:
            await r.stop()


async def test_a_flood_of_unknown_ids_sends_at_most_asks_max_asks_at_once(monkeypatch: Any) -> None:
    """Follow-ups naming ids nobody keeps (a client's garbage, a flood): each round asks every endpoint,
    but all rounds together keep at most ``ASKS_MAX`` asks in flight; each then gets the server's 404."""
    from kvgate.gateway import locate

    monkeypatch.setattr(locate, "ASKS_MAX", 3)
    now = peak = 0

    class Counting(ResponsesStore):
        async def _retrieve(self, request: web.Request) -> web.StreamResponse:
            nonlocal now, peak
            now += 1
            peak = max(peak, now)
            try:
                await asyncio.sleep(0.02)  # (an ask that takes a moment: the asks overlap)
                return await super()._retrieve(request)
            finally:
                now -= 1

    async with serving(Counting("a"), Counting("b")) as stores:
        cfg = make_config([st.address for st in stores])
        async with running_gateway(cfg) as gw, aiohttp.ClientSession() as session:
            url = base_url(gw) + "/v1/responses"
            bodies = [
                {"model": "m", "input": "x", "previous_response_id": f"resp_gone{i}"} for i in range(12)
            ]
            got = await asyncio.gather(*(_post(session, url, b) for b in bodies))
            assert [status for status, _, _ in got] == [404] * 12, got
            assert gw.proxy is not None and gw.proxy.locator.rounds == 12
    assert 0 < peak <= 3, peak
