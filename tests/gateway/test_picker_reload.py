"""A live picker swap (config reload of a pool's ``policy`` / ``endpointPickerConfig``): every request
stays on the Director that admitted it until it finishes; the new one takes only new requests."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson
import yaml

from flowcontrol.test_doors import HeldBackend
from gateway.backend import free_port
from gateway.conftest import base_url, make_config, make_pools, running_gateway
from kvgate.config.director import build_director
from kvgate.config.gateway import parse_gateway_config
from kvgate.datalayer.store import EndpointStore
from kvgate.gateway import reload as reload_mod
from kvgate.gateway.pools import Pool
from kvgate.gateway.prefix_gossip import PrefixGossip, pool_indexes
from kvgate.gateway.reload import ConfigReloader, layout_id
from kvgate.gateway.server import GatewayServer
from kvgate.scheduling.plugins.prefix_cache import PrefixCacheScorer
from kvgate.scheduling.plugins.session import session_digest
from kvgate.scheduling.types import InferenceRequest, PickResult

BODY = b'{"model":"m","prompt":"x","max_tokens":1}'


class Recording:
    """A Director that records each call and passes it to a real one; ``on_dispatch`` runs once, right
    after the first dispatch it is told of (the moment to swap the pool's Director)."""

    def __init__(self, inner: Any, first: list[Any] | None = None) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []
        self.first = first  # what ``admit`` answers (a fixed order of endpoints), else the real pick
        self.on_dispatch: Any = None

    def pick(self, req: InferenceRequest, explain: bool = False) -> PickResult:
        self.calls.append(("pick", ""))
        return self.inner.pick(req, explain)  # type: ignore[no-any-return]

    async def admit(
        self, req: InferenceRequest, explain: bool = False, wait_max: float | None = None
    ) -> PickResult:
        self.calls.append(("admit", ""))
        if self.first is not None:
            return PickResult(list(self.first))
        return await self.inner.admit(req, explain, wait_max)  # type: ignore[no-any-return]

    def on_dispatched(self, req: InferenceRequest, endpoint: Any) -> None:
        self.calls.append(("dispatched", endpoint.address))
        self.inner.on_dispatched(req, endpoint)
        hook, self.on_dispatch = self.on_dispatch, None
        if hook is not None:
            hook()

    def on_first_token(self, req: InferenceRequest, endpoint: Any, learn: bool = True) -> None:
        self.calls.append(("first", endpoint.address))
        self.inner.on_first_token(req, endpoint, learn)

    def on_finished(self, req: InferenceRequest, endpoint: Any, usage: Any, ok: bool) -> None:
        self.calls.append(("finished", endpoint.address))
        self.inner.on_finished(req, endpoint, usage, ok)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_retry_after_a_swap_stays_on_the_director_that_admitted_the_request(backends):
    """The pool's Director is swapped between the first attempt's pick and its dispatch: the retry (the
    first endpoint refuses the connection) must be picked, dispatched and finished on the old Director,
    and the new one must see nothing of this request (else one Director holds a dispatch the other
    finishes: in-flight counts leak on both)."""
    (live,) = await backends(1)
    dead = f"127.0.0.1:{free_port()}"
    cfg = make_config([dead, live.address], extra={"health": {"ejectAfterFailures": 1000}})
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        pool: Pool = gw.pools[0]
        eps = {ep.address: ep for ep in pool.endpoints()}
        old = Recording(pool.director, first=[eps[dead], eps[live.address]])
        new = Recording(make_pools(cfg)[0].director)
        pool.director = old

        def swap() -> None:
            pool.director = new

        old.on_dispatch = swap
        async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 200, await r.text()
        assert new.calls == []
        assert old.calls == [
            ("admit", ""), ("dispatched", dead), ("finished", dead),
            ("pick", ""), ("dispatched", live.address), ("first", live.address), ("finished", live.address),
        ]  # fmt: skip
        assert all(ep.inflight.requests == 0 for ep in pool.endpoints())
        assert not old.inner._tracks and not new.inner._tracks
        # The next request is the new Director's.
        async with s.post(base_url(gw) + "/v1/completions", data=BODY) as r:
            assert r.status == 200
        assert [c[0] for c in new.calls][:2] == ["admit", "dispatched"]


# --- the swap itself (gateway.reload.ConfigReloader on a running GatewayServer) ---------------------

QUEUE = {"type": "queue-scorer"}


def _picker(
    *plugins: dict[str, Any], flow: bool = False, prefix: dict[str, Any] | None = None, slots: int = 1
) -> dict[str, Any]:
    plugs = [dict(p) for p in plugins]
    if prefix is not None:
        plugs.append({"type": "prefix-cache-scorer", "parameters": prefix})
    doc: dict[str, Any] = {
        "plugins": plugs,
        "schedulingProfiles": [
            {"name": "default", "plugins": [{"pluginRef": p.get("name", p["type"])} for p in plugs]}
        ],
    }
    if flow:
        doc["featureGates"] = ["flowControl"]
        doc["saturationDetector"] = {"type": "concurrency-detector", "parameters": {"maxConcurrency": slots}}
    return doc


def _doc(
    addresses: list[str], picker: dict[str, Any] | None = None, policy: str = "round-robin"
) -> dict[str, Any]:
    pool: dict[str, Any] = {"name": "p", "endpoints": addresses, "models": ["m"], "policy": policy}
    if picker is not None:
        pool["endpointPickerConfig"] = picker
    return {"listen": {"host": "127.0.0.1", "port": 0}, "pools": [pool]}


def _write(path: Any, doc: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump(doc))


def _reloads(gw: GatewayServer, result: str) -> float:
    return gw.metrics.reloads.labels(result=result)._value.get()  # type: ignore[no-any-return]


def _reloader(path: Any, gw: GatewayServer, **kw: Any) -> ConfigReloader:
    return ConfigReloader(str(path), gw.cfg, gw.pools, None, gw.apply_limits, server=gw, **kw)


async def _post(s: aiohttp.ClientSession, gw: GatewayServer, prompt: str = "x") -> int:
    body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 1})
    async with s.post(base_url(gw) + "/v1/completions", data=body) as r:
        await r.read()
        return r.status


async def test_an_invalid_picker_refuses_the_whole_reload_and_names_its_key(backends, tmp_path, caplog):
    a, b = await backends(2)
    f = tmp_path / "gw.yaml"
    doc = _doc([a.address], _picker(QUEUE))
    _write(f, doc)
    cfg = parse_gateway_config(doc)
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        pool = gw.pools[0]
        old, listeners = pool.director, pool.store.listeners
        rl = _reloader(f, gw)
        # The picker is wrong in its 2nd plugin; the same file adds an endpoint and lowers the body cap:
        # nothing of it applies.
        bad = _doc([a.address, b.address], _picker(QUEUE, prefix={"blockSize": 0}))
        bad["limits"] = {"maxBodyBytes": 10}
        _write(f, bad)
        with caplog.at_level(logging.ERROR, "kvgate.gateway.reload"):
            assert not await rl.areload()
        assert (
            "is invalid, keeping the running config: pools[0].endpointPickerConfig: plugins[1]" in caplog.text
        )
        assert "blockSize" in caplog.text
        assert pool.director is old and pool.store.listeners == listeners
        assert [ep.address for ep in pool.endpoints()] == [a.address]
        assert gw.cfg.limits.max_body_bytes != 10
        assert _reloads(gw, "invalid") == 1 and _reloads(gw, "applied") == 0
        assert await _post(s, gw) == 200
        # Fixed: applied, every part of it.
        good = _doc([a.address, b.address], _picker(QUEUE, prefix={"blockSizeTokens": 32}))
        _write(f, good)
        with caplog.at_level(logging.WARNING, "kvgate.gateway.reload"):
            assert await rl.areload()
        assert pool.director is not old and _reloads(gw, "applied") == 1
        assert pool.director.health is old.health  # the server's thresholds (health: restart to apply)
        assert "restart to apply" not in caplog.text
        assert len(pool.endpoints()) == 2
        assert await _post(s, gw) == 200
        # Same file again: nothing to swap.
        new = pool.director
        assert await rl.areload() and pool.director is new


async def test_a_swap_keeps_the_prefix_index_only_when_the_scorer_is_unchanged(backends, tmp_path):
    (a,) = await backends(1)
    f = tmp_path / "gw.yaml"
    doc = _doc([a.address], _picker(QUEUE, prefix={"blockSizeTokens": 16}))
    _write(f, doc)
    cfg = parse_gateway_config(doc)
    async with running_gateway(cfg) as gw, aiohttp.ClientSession() as s:
        pool = gw.pools[0]
        assert await _post(s, gw, "hello " * 200) == 200
        scorer = pool.director.handle.find(PrefixCacheScorer)
        assert len(scorer.index)  # it learnt the prompt
        ep = pool.endpoints()[0]
        ep.metrics.running_requests = 3  # scrape state: the endpoint's, kept
        rl = _reloader(f, gw)
        # Another scorer beside it, the prefix scorer as it was: its index is kept.
        _write(
            f,
            _doc(
                [a.address],
                _picker(QUEUE, {"type": "kv-cache-utilization-scorer"}, prefix={"blockSizeTokens": 16}),
            ),
        )
        assert await rl.areload()
        kept = pool.director.handle.find(PrefixCacheScorer)
        assert kept is not scorer and kept.index is scorer.index
        assert pool.endpoints()[0] is ep and ep.metrics.running_requests == 3
        # Session affinity added, then carried across a swap that keeps it.
        sessions = {"type": "session-affinity-scorer"}
        _write(f, _doc([a.address], _picker(QUEUE, sessions, prefix={"blockSizeTokens": 16})))
        assert await rl.areload()
        s1 = session_digest("s1")
        pool.director.handle.plugins["session-affinity-scorer"].sessions[s1] = ep.address
        _write(f, _doc([a.address], _picker(sessions, prefix={"blockSizeTokens": 16})))
        assert await rl.areload()
        assert pool.director.handle.plugins["session-affinity-scorer"].sessions == {s1: ep.address}
        # Its parameters changed: a new index (its blocks would not mean the same).
        _write(f, _doc([a.address], _picker(QUEUE, prefix={"blockSizeTokens": 32})))
        assert await rl.areload()
        assert pool.director.handle.find(PrefixCacheScorer).index is not scorer.index
        # The discarded pickers left the store's listeners: one prefix scorer's, not three.
        mine = [
            f for f in pool.store.listeners if isinstance(getattr(f, "__self__", None), PrefixCacheScorer)
        ]
        assert len(mine) == 1


async def _until(cond: Any) -> None:
    """Run the loop until ``cond()`` holds (each turn lets the tasks under test take their next step), 30 s
    at most: by a deadline, not a count of turns, since a reload now checks its pickers on a thread first
    (fixqa29b, Q6), which a loaded machine may not run within any fixed number of turns."""
    deadline = time.monotonic() + 30.0
    turns = 0
    while not cond():
        assert time.monotonic() < deadline, "condition never held"
        turns += 1
        await asyncio.sleep(0 if turns < 10_000 else 0.001)


async def test_a_request_after_the_swap_waits_behind_the_old_pickers_queue():
    """Flow control's queue on the old picker leaves first: a request the new one admits while the old
    one still holds queued requests queues behind them, even at a moment the pool has room (the old
    dispatcher not told yet). Without ``predecessor`` it was picked at once, overtaking them."""
    store = EndpointStore.from_addresses(["127.0.0.1:1"], pool="p")
    (ep,) = store.all()
    picker = _picker(QUEUE, flow=True)
    old, new = build_director(picker, store), build_director(picker, store)
    ep.inflight.requests = 1  # full (maxConcurrency 1)
    b_req = InferenceRequest("b", "m")
    b = asyncio.create_task(old.admit(b_req))
    await _until(lambda: old.queued() == 1)
    new.predecessor = old  # the swap (``ConfigReloader._swap``)
    ep.inflight.requests = 0  # room, and the old dispatcher not told yet
    c_req = InferenceRequest("c", "m")
    c = asyncio.create_task(new.admit(c_req))
    await _until(lambda: new.queued() == 1 or c.done())
    assert not c.done(), "the new picker's request overtook the old picker's queue"
    assert (await b).primary is ep  # the old queue leaves (its dispatcher rechecks) ...
    assert ep.inflight.requests == 1 and not c.done()  # ... and fills the pool: c still waits
    old.on_finished(b_req, ep, None, True)
    assert (await asyncio.wait_for(c, 10)).primary is ep
    assert new.predecessor is None  # forgotten once empty
    new.on_finished(c_req, ep, None, True)
    assert ep.inflight.requests == 0 and not old._tracks and not new._tracks


async def test_a_reload_loses_no_request_queued_in_the_old_pickers_flow_control(tmp_path):
    """Through ``kvgate serve``'s proxy over HTTP: one request in flight and one queued on the old
    picker (flow control, one slot) when a reload swaps the picker; a third arrives after the swap. All
    three are answered, in arrival order, each accounted on the picker that admitted it."""
    backend = await HeldBackend().start()
    f = tmp_path / "gw.yaml"
    doc = _doc([backend.address], _picker(QUEUE, flow=True))
    _write(f, doc)
    try:
        async with running_gateway(parse_gateway_config(doc)) as gw, aiohttp.ClientSession() as s:
            pool = gw.pools[0]
            old = pool.director
            a = asyncio.create_task(_post(s, gw, "a"))
            await _until(lambda: backend.arrivals == ["a"])
            b = asyncio.create_task(_post(s, gw, "b"))
            await _until(lambda: old.queued() == 1)
            _write(
                f, _doc([backend.address], _picker(QUEUE, {"type": "kv-cache-utilization-scorer"}, flow=True))
            )
            assert await _reloader(f, gw).areload()
            new = pool.director
            assert new is not old and new.predecessor is old
            c = asyncio.create_task(_post(s, gw, "c"))
            await _until(lambda: new.queued() == 1)
            for _ in range(3):
                backend.release.release()
            assert await asyncio.wait_for(asyncio.gather(a, b, c), 20) == [200, 200, 200]
            assert backend.arrivals == ["a", "b", "c"]
            assert not old._tracks and not new._tracks and old.queued() == 0
            assert all(ep.inflight.requests == 0 for ep in pool.endpoints())
            assert new.predecessor is None
    finally:
        await backend.stop()


class _Source:
    """A data source whose start waits (as a KV-event catch-up does) until ``go`` is set."""

    def __init__(self, go: asyncio.Event | None = None, fail: bool = False) -> None:
        self.go, self.fail = go, fail
        self.started = asyncio.Event()
        self.stopped = False

    async def start(self) -> None:
        self.started.set()
        if self.fail:
            raise OSError("no KV-event publisher")
        if self.go is not None:
            await self.go.wait()

    async def stop(self) -> None:
        self.stopped = True


async def test_the_new_pickers_data_sources_catch_up_before_the_swap(backends, tmp_path, monkeypatch):
    """Its KV-event sources start (and catch up) while the old picker still serves; a source that fails
    to start refuses the reload (``failed``), the old picker kept; once swapped, the old one's stop."""
    (a,) = await backends(1)
    f = tmp_path / "gw.yaml"
    doc = _doc([a.address])
    _write(f, doc)
    cfg = parse_gateway_config(doc)
    pools = make_pools(cfg)
    first = _Source()
    pools[0].director.data_sources = lambda: [first]  # type: ignore[attr-defined]
    gw = GatewayServer(cfg, pools, scrape=False)
    await gw.start()
    made: list[_Source] = []
    plan: list[_Source] = []
    real = reload_mod.build_director_for

    def build(*args: Any, **kw: Any) -> Any:
        d = real(*args, **kw)
        src = plan.pop(0)
        made.append(src)
        d.data_sources = lambda: [src]
        return d

    monkeypatch.setattr(reload_mod, "build_director_for", build)
    try:
        async with aiohttp.ClientSession() as s:
            pool = gw.pools[0]
            old = pool.director
            rl = _reloader(f, gw)
            _write(f, _doc([a.address], policy="least-request"))
            plan.append(_Source(fail=True))
            assert not await rl.areload()
            assert pool.director is old and _reloads(gw, "failed") == 1 and made[0].stopped
            go = asyncio.Event()
            plan.append(_Source(go))
            swap = asyncio.create_task(rl.areload())
            await _until(lambda: len(made) == 2)
            await made[1].started.wait()
            assert pool.director is old  # catching up: the old picker serves meanwhile
            assert await _post(s, gw) == 200
            go.set()
            assert await swap and pool.director is not old
            assert first.stopped and not made[1].stopped
            assert made[1] in gw._scrapers and first not in gw._scrapers
    finally:
        await gw.stop(drain_timeout=1.0)
    assert made[1].stopped


def test_workers_gossip_only_between_the_same_prefix_layout_across_a_reload(tmp_path):
    """``--workers``: the prefix gossip's index ids are positions over the pools' prefix scorers. Two
    workers reloading a moment apart: while one runs the new layout (a re-parametrised prefix scorer: a
    new index) and the other the old, neither applies the other's insertions (another layout id), and
    once both have reloaded they gossip again, into the new indexes. Before, the late worker applied the
    early one's insertions to its old index (the same id, another meaning)."""
    f = tmp_path / "gw.yaml"
    doc = _doc(["127.0.0.1:1001"], _picker(QUEUE, prefix={"blockSizeTokens": 16}))
    _write(f, doc)
    workers = []
    for w in range(2):
        cfg = parse_gateway_config(doc)
        pools = make_pools(cfg)
        gossip = PrefixGossip(
            pool_indexes(pools), w, lambda _d: None, layout=layout_id([p.cfg for p in pools])
        )

        def relayout(pools: list[Pool] = pools, gossip: PrefixGossip = gossip) -> None:
            gossip.relayout(pool_indexes(pools), layout_id([p.cfg for p in pools]))

        rl = ConfigReloader(str(f), cfg, pools, None, on_swap=relayout)
        workers.append((pools, gossip, rl))

    def index(w: int) -> Any:
        return pool_indexes(workers[w][0])[0]

    def insert(w: int, hashes: list[int]) -> None:
        index(w).add("127.0.0.1:1001", hashes)
        sent: list[bytes] = []
        g, other = workers[w][1], workers[1 - w][1]
        g.send = sent.append
        g.flush()
        for d in sent:
            other.receive(d)

    def holds(w: int, hashes: list[int]) -> int:
        return int(index(w).match(hashes, ["127.0.0.1:1001"])[0])

    insert(0, [1, 2, 3])
    assert holds(1, [1, 2, 3]) == 3  # the same layout: applied
    old1 = index(1)
    # Worker 0 reloads first: blockSize 32, a new index.
    _write(f, _doc(["127.0.0.1:1001"], _picker(QUEUE, prefix={"blockSizeTokens": 32})))
    assert workers[0][2].reload()
    assert workers[0][1].layout != workers[1][1].layout
    insert(0, [7, 8, 9])  # in worker 0's new index: never applied to worker 1's old one
    assert holds(1, [7, 8, 9]) == 0 and workers[1][1].other_layout == 1
    insert(1, [4, 5])  # worker 1's old index: never applied to worker 0's new one
    assert holds(0, [4, 5]) == 0 and workers[0][1].other_layout == 1
    # Worker 1 reloads: both on the new layout, gossiping into the new indexes.
    assert workers[1][2].reload()
    assert workers[0][1].layout == workers[1][1].layout and index(1) is not old1
    insert(0, [10, 11])
    assert holds(1, [10, 11]) == 2 and not old1.match([10, 11], ["127.0.0.1:1001"])[0]
    # A swap that keeps the prefix scorer: the same index, the same layout; the gossip is untouched.
    kept = index(0)
    _write(f, _doc(["127.0.0.1:1001"], _picker(QUEUE, {"type": "kv-cache-utilization-scorer"},
                                              prefix={"blockSizeTokens": 32})))  # fmt: skip
    before = workers[0][1].layout
    assert workers[0][2].reload() and workers[1][2].reload()
    assert index(0) is kept and workers[0][1].layout == before
    insert(1, [20, 21])
    assert holds(0, [20, 21]) == 2


def test_the_supervisor_refuses_a_file_whose_picker_no_worker_could_build(tmp_path, caplog):
    """``--workers``: the supervisor builds each changed picker before it writes the snapshot, so a picker
    a worker would refuse reaches none (nor a worker restarted later)."""
    import os

    from kvgate.config.gateway import load_gateway_config
    from kvgate.gateway.workers import Supervisor, _WorkersReload, merge_metrics, read_snapshot

    f = tmp_path / "gw.yaml"
    _write(f, _doc(["127.0.0.1:1"], _picker(QUEUE, prefix={"blockSizeTokens": 16})))
    sup = Supervisor(load_gateway_config(str(f)), 2, config_path=str(f))
    (tmp_path / "snap").mkdir(mode=0o700)
    sup.snapshot = str(tmp_path / "snap" / "config.pickle")
    watch = _WorkersReload(sup, str(f))
    try:
        _write(f, _doc(["127.0.0.1:1"], _picker(QUEUE, prefix={"blockSize": 0})))
        assert not watch.reload()
        assert "pools[0].endpointPickerConfig: plugins[1]" in caplog.text
        assert not os.path.exists(sup.snapshot) and sup.reloads == 0
        assert sup.reload_failures == {"invalid": 1, "failed": 0}  # counted here: no worker ever sees it
        merged = merge_metrics([None], {"supervisor": sup._own_metrics()}).decode()
        assert 'kvgate_gateway_config_reloads_total{result="invalid",worker="supervisor"} 1.0' in merged
        # A valid one is sent, and kept for a worker restarted later.
        _write(f, _doc(["127.0.0.1:1"], _picker(QUEUE, prefix={"blockSizeTokens": 32})))
        assert watch.reload() and sup.reloads == 1
        for cfg in (read_snapshot(sup.snapshot), sup.cfg, sup.file_cfg):
            assert cfg.pools[0].picker_config["plugins"][1]["parameters"] == {"blockSizeTokens": 32}
    finally:
        for lock in sup._locks.values():
            os.close(lock)


def test_a_synchronous_reload_swaps_a_picker_and_no_longer_asks_for_a_restart(tmp_path, caplog):
    """``ConfigReloader.reload`` (no server): the policy changes live; not named as "restart to apply"."""
    f = tmp_path / "gw.yaml"
    doc = _doc(["127.0.0.1:1001"])
    _write(f, doc)
    cfg = parse_gateway_config(doc)
    pools = make_pools(cfg)
    old = pools[0].director
    rl = ConfigReloader(str(f), cfg, pools)
    _write(f, _doc(["127.0.0.1:1001"], policy="least-request"))
    with caplog.at_level(logging.WARNING, "kvgate.gateway.reload"):
        assert rl.reload()
    assert pools[0].director is not old and pools[0].cfg.policy == "least-request"
    assert "picker swapped (round-robin -> least-request)" in caplog.text
    assert "restart to apply" not in caplog.text
    assert rl.reload() and "restart to apply" not in caplog.text


async def test_two_reloads_a_moment_apart_keep_the_oldest_queue_first(tmp_path):
    """A second swap while the first one's predecessor still holds queued requests (the picker in
    between has none): the newest picker still waits behind that oldest queue. (The new pickers allow
    two requests, the old one one: with one in flight the old queue stays put, the new gate has room.)"""
    f = tmp_path / "gw.yaml"
    doc = _doc(["127.0.0.1:1001"], _picker(QUEUE, flow=True))
    _write(f, doc)
    cfg = parse_gateway_config(doc)
    pools = make_pools(cfg)
    pool = pools[0]
    (ep,) = pool.endpoints()
    rl = ConfigReloader(str(f), cfg, pools, None)
    old = pool.director
    ep.inflight.requests = 1  # full for the old picker: the next request queues there
    b = asyncio.create_task(old.admit(InferenceRequest("b", "m")))
    await _until(lambda: old.queued() == 1)
    for extra in ({"type": "kv-cache-utilization-scorer"}, {"type": "running-requests-size-scorer"}):
        _write(f, _doc(["127.0.0.1:1001"], _picker(QUEUE, extra, flow=True, slots=2)))
        assert rl.reload()
    newest = pool.director
    assert newest.queued() == 0 and old.queued() == 1
    c = asyncio.create_task(newest.admit(InferenceRequest("c", "m")))
    await _until(lambda: newest.queued() == 1 or c.done())
    assert not c.done(), "the newest picker overtook the oldest queue"
    ep.inflight.requests = 0  # the old queue leaves first, then the newest's
    assert (await asyncio.wait_for(b, 10)).primary is ep
    assert (await asyncio.wait_for(c, 10)).primary is ep


async def test_the_pool_aggregate_follows_the_swapped_picker(backends, tmp_path):
    """``/v1/pool/aggregate`` (what a multi-cluster gateway reads) takes its prefix summary from the
    pool's prefix scorer: built again after a swap, it summarises the new picker's index (it kept the
    old picker's, here none: no summary ever)."""
    (a,) = await backends(1)
    f = tmp_path / "gw.yaml"
    doc = _doc([a.address])
    _write(f, doc)
    async with running_gateway(parse_gateway_config(doc)) as gw, aiohttp.ClientSession() as s:
        url = base_url(gw) + "/v1/pool/aggregate?pool=p"

        async def summary() -> Any:
            async with s.get(url) as r:
                assert r.status == 200
                doc = orjson.loads(await r.read())
            return {k: v for k, v in doc.items() if "prefix" in k.lower() and v}

        assert not await summary()  # round-robin: no prefix scorer
        _write(f, _doc([a.address], _picker(QUEUE, prefix={"blockSizeTokens": 16})))
        assert await _reloader(f, gw).areload()
        assert await _post(s, gw, "hello " * 200) == 200
        assert await summary()
