"""The picker against simulated vLLM replicas over real HTTP on loopback.

Each replica is ``kvgate.sim.server.Replica`` (its ``/metrics`` speaks vLLM's names); a real
``MetricsScraper`` keeps the store fresh, and requests go to the picked replica with aiohttp, reporting
dispatch / first token / finish to the Director as a front door does. Replicas get a tiny
``max_num_seqs`` so a few long requests sent around the picker make a visible queue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest

from kvgate.config.director import build_director
from kvgate.datalayer.scraper import MetricsScraper
from kvgate.datalayer.store import EndpointStore, make_endpoint
from kvgate.requestcontrol.director import Director
from kvgate.scheduling.types import InferenceRequest, ShedError, Usage
from kvgate.sim.server import Replica, ReplicaConfig

MODEL = "sim-model"


class Harness:
    def __init__(self, replicas: list[Replica], session: aiohttp.ClientSession) -> None:
        self.replicas = replicas
        self.session = session
        self.store = EndpointStore(make_endpoint(f"127.0.0.1:{r.port}") for r in replicas)
        self.scraper = MetricsScraper(self.store, interval=0.02, timeout=2.0, session=session)
        self.background: list[asyncio.Task[Any]] = []
        self._ids = itertools.count()

    def addr(self, i: int) -> str:
        return f"127.0.0.1:{self.replicas[i].port}"

    def director(self, policy: str | dict[str, Any]) -> Director:
        return build_director(policy, self.store, seed=0)

    async def post(self, addr: str, model: str, text: str, max_tokens: int) -> dict[str, Any]:
        body = {"model": model, "prompt": text, "max_tokens": max_tokens, "ignore_eos": True}
        async with self.session.post(f"http://{addr}/v1/completions", json=body) as resp:
            assert resp.status == 200, await resp.text()
            return dict(await resp.json())

    async def send(
        self, d: Director, text: str, *, lora: str | None = None, priority: int = 0, max_tokens: int = 4
    ) -> str:
        req = InferenceRequest(
            f"req-{next(self._ids)}",
            lora or MODEL,
            prompt_text=text,
            prompt_tokens=len(text) // 4,
            max_tokens=max_tokens,
            lora_adapter=lora,
            priority=priority,
        )
        ep = d.pick(req).primary
        d.on_dispatched(req, ep)
        ok = False
        try:
            out = await self.post(ep.address, req.model, text, max_tokens)
            d.on_first_token(req, ep)
            u = out.get("usage", {})
            ok = True
        finally:
            d.on_finished(
                req, ep, Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0)) if ok else None, ok
            )
        return str(ep.address)

    def load(self, i: int, n: int, model: str = MODEL, max_tokens: int = 3000) -> None:
        """Long requests sent straight to replica ``i``, around the picker (another gateway's traffic)."""
        for k in range(n):
            text = f"background load {i} {k} " * 20
            self.background.append(asyncio.ensure_future(self.post(self.addr(i), model, text, max_tokens)))

    async def until(self, cond: Any, limit_s: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + limit_s
        while not cond():
            assert loop.time() < end, "condition not reached"
            await asyncio.sleep(0.02)


async def _harness(configs: Sequence[ReplicaConfig]) -> AsyncIterator[Harness]:
    replicas = [Replica(c, index=i) for i, c in enumerate(configs)]
    for r in replicas:
        await r.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    h = Harness(replicas, session)
    await h.scraper.start()
    await h.scraper.scrape_all()
    try:
        yield h
    finally:
        for t in h.background:
            t.cancel()
        await asyncio.gather(*h.background, return_exceptions=True)
        await h.scraper.stop()
        for r in replicas:
            await r.close()
        await session.close()


@pytest.fixture
async def three() -> AsyncIterator[Harness]:
    async for h in _harness([ReplicaConfig(max_num_seqs=2, seed=i) for i in range(3)]):
        yield h


def _queue(h: Harness, i: int) -> int:
    ep = h.store.get(h.addr(i))
    assert ep is not None
    return ep.metrics.waiting_queue_size


@pytest.mark.parametrize("policy", ["reference", "kvgate"])
async def test_queue_signal_steers_away_from_loaded_replica(three: Harness, policy: str) -> None:
    h = three
    h.load(0, 8)
    await h.until(lambda: _queue(h, 0) >= 5)
    d = h.director(policy)
    got = Counter([await h.send(d, f"fresh question {i} " * 10) for i in range(12)])
    assert got[h.addr(0)] == 0, got
    assert got[h.addr(1)] > 0 and got[h.addr(2)] > 0


async def test_prefix_sticks_until_holder_is_overloaded(three: Harness) -> None:
    h = three
    d = h.director("kvgate")
    system = "You are a meticulous assistant for the kvgate project. " * 30  # ~1,650 chars
    first = await h.send(d, system + "question 0")
    for i in range(1, 8):
        assert await h.send(d, system + f"question {i}") == first
    i_first = next(i for i in range(3) if h.addr(i) == first)
    h.load(i_first, 10)  # the holder gets busy through another path
    await h.until(lambda: _queue(h, i_first) >= 5)
    later = Counter([await h.send(d, system + f"question {i}") for i in range(8, 16)])
    assert later[first] == 0, later


async def test_sheddable_rejected_under_saturation_normal_admitted(three: Harness) -> None:
    h = three
    d = h.director("kvgate")
    assert await h.send(d, "before saturation " * 10, priority=-1)
    for i in range(3):
        h.load(i, 8)
    await h.until(lambda: all(_queue(h, i) >= 5 for i in range(3)))
    with pytest.raises(ShedError):
        await h.send(d, "sheddable " * 10, priority=-1)
    # A normal request is still admitted (it would queue at the server; the pick is what matters here).
    assert d.pick(InferenceRequest("normal", MODEL, prompt_text="normal priority " * 10)).primary


async def test_stale_metrics_avoided_and_count_as_saturated(three: Harness) -> None:
    h = three
    stale = h.store.get(h.addr(2))
    assert stale is not None
    await h.replicas[2].stop()  # stops answering: its metrics age past the staleness threshold
    await h.until(lambda: h.scraper.stats[h.addr(2)].failed > 0)
    assert stale.metrics.updated_at is not None
    stale.metrics.updated_at -= 5.0  # as if the last good scrape were 5 s ago
    d = h.director("reference")
    picks = Counter(
        d.pick(InferenceRequest(f"s{i}", MODEL, prompt_text=f"x{i} " * 40)).primary.address for i in range(30)
    )
    assert picks[h.addr(2)] == 0, picks
    assert d.detector is not None and d.detector.endpoint_saturation(stale, d.clock()) == 1.0


@pytest.fixture
async def lora_fleet() -> AsyncIterator[Harness]:
    cfgs = [
        ReplicaConfig(max_num_seqs=4, max_loras=1, lora_adapters=("sql",), seed=0),
        ReplicaConfig(max_num_seqs=4, max_loras=1, lora_adapters=("chat",), seed=1),
        ReplicaConfig(max_num_seqs=4, max_loras=1, lora_adapters=("sql", "chat"), seed=2),
    ]
    async for h in _harness(cfgs):
        yield h


async def test_adapters_go_where_loaded_or_free_slot(lora_fleet: Harness) -> None:
    h = lora_fleet
    h.load(0, 1, model="sql")  # replica 0 runs "sql", replica 1 runs "chat": each slot is taken
    h.load(1, 1, model="chat")

    def running(i: int, adapter: str) -> bool:
        ep = h.store.get(h.addr(i))
        return ep is not None and adapter in ep.metrics.running_loras

    await h.until(lambda: running(0, "sql") and running(1, "chat"))
    d = h.director("kvgate")
    sql = Counter([await h.send(d, f"select {i} " * 10, lora="sql", max_tokens=2) for i in range(6)])
    assert set(sql) <= {h.addr(0), h.addr(2)} and sql[h.addr(1)] == 0, sql
    chat = Counter([await h.send(d, f"hello {i} " * 10, lora="chat", max_tokens=2) for i in range(6)])
    assert chat[h.addr(0)] == 0, chat  # replica 0's only slot is busy with another adapter
