"""The pool aggregate: numbers, readiness rules, the Bloom summary and its cap, served by both front doors."""

from __future__ import annotations

import time

import aiohttp
import msgspec
import pytest

from kvgate.datalayer import aggregate as agg
from kvgate.datalayer.endpoint import Endpoint, EndpointMetrics
from kvgate.scheduling.prefix import block_hashes


def _ep(addr: str, *, q: int = 0, run: int = 0, kv: float = 0.0, at: float | None = 10.0,
        gpu: str = "H100", healthy: bool = True) -> Endpoint:  # fmt: skip
    m = EndpointMetrics(waiting_queue_size=q, running_requests=run, kv_cache_usage=kv, updated_at=at)
    return Endpoint(addr, labels={"kvgate.io/gpu": gpu}, metrics=m, healthy=healthy)


def test_averages_std_and_kvgate_fields() -> None:
    eps = [_ep("a:1", q=2, run=10, kv=0.5), _ep("b:1", q=4, run=30, kv=0.7, gpu="NVIDIA-H200"),
           _ep("c:1", at=None), _ep("d:1", healthy=False), _ep("e:1", at=5.0)]  # fmt: skip
    a = agg.aggregate("pool", eps, now=10.5, wall=1000.0, staleness_s=2.0)
    # never scraped, ejected and stale endpoints are not ready: unknown is not idle
    assert (a.ready_endpoints, a.total_endpoints) == (2, 5)
    assert a.average_queue_size == pytest.approx(3.0)
    assert a.std_dev_queue_size == pytest.approx(1.0)
    assert a.average_running_requests == pytest.approx(20.0)
    assert a.average_kv_cache_utilization == pytest.approx(0.6)
    assert (a.min_queue_size, a.max_queue_size) == (2.0, 4.0)
    assert a.ready_by_gpu == {"h100": 1, "h200": 1}
    assert a.capacity == pytest.approx(1.0 + agg.GPU_SPEED["h200"])
    assert 0 < a.headroom < a.capacity
    assert a.predicted_ttft_s is not None and a.predicted_ttft_s > 0
    assert a.metrics_age_s == pytest.approx(0.5)
    assert a.snapshot_time == 1000.0
    back = agg.decode(agg.encode(a))
    assert back == a


def test_zero_ready_has_no_capacity_and_no_prediction() -> None:
    a = agg.aggregate("pool", [_ep("a:1", at=None)], now=1.0, wall=1.0)
    assert a.ready_endpoints == 0 and a.capacity == 0 and a.predicted_ttft_s is None


def test_more_load_less_headroom() -> None:
    idle = agg.aggregate("p", [_ep("a:1")], now=10, wall=0)
    busy = agg.aggregate("p", [_ep("a:1", q=20, run=60, kv=0.9)], now=10, wall=0)
    assert busy.headroom < idle.headroom
    assert busy.predicted_ttft_s is not None and idle.predicted_ttft_s is not None
    assert busy.predicted_ttft_s > idle.predicted_ttft_s


def test_request_slots_come_from_what_the_kv_cache_holds() -> None:
    """An endpoint is full when its KV cache is (running / kv use requests of the current mix), capped at
    MAX_BATCH; one with nothing to measure yet counts the MAX_BATCH prior."""
    small = _ep("a:1", run=4, kv=0.5, q=0)  # 4 requests fill half its KV: it holds 8
    assert agg.measured_slots(small) == pytest.approx(8.0)
    a = agg.aggregate("p", [small], now=10, wall=0)
    assert a.request_slots == pytest.approx(8.0)
    assert a.headroom == pytest.approx(0.5)
    queued = agg.aggregate("p", [_ep("a:1", run=4, kv=0.5, q=4)], now=10, wall=0)
    assert queued.headroom == pytest.approx(0.0)  # 4 running + 4 waiting fill its 8 slots
    roomy = _ep("b:1", run=4, kv=0.01)  # too little KV in use to tell: the prior
    assert agg.measured_slots(roomy) is None
    assert agg.aggregate("p", [roomy], now=10, wall=0).request_slots == agg.MAX_BATCH
    huge = _ep("c:1", run=100, kv=0.2)  # KV for 500, but the batch caps it
    assert agg.measured_slots(huge) == agg.MAX_BATCH


def test_slot_memory_keeps_an_idle_endpoints_estimate() -> None:
    mem = agg.SlotMemory()
    ep = _ep("a:1", run=4, kv=0.5)
    assert mem.update([ep]) == {"a:1": pytest.approx(8.0)}
    ep.metrics.running_requests, ep.metrics.kv_cache_usage = 0, 0.0  # idle now
    slots = mem.update([ep])
    assert slots == {"a:1": pytest.approx(8.0)}
    assert agg.aggregate("p", [ep], now=10, wall=0, slots=slots).request_slots == pytest.approx(8.0)
    ep.metrics.running_requests, ep.metrics.kv_cache_usage = 8, 0.5  # a lighter mix: it holds 16
    assert 8.0 < mem.update([ep])["a:1"] < 16.0  # moves towards it
    assert mem.update([]) == {}  # a removed endpoint is forgotten


def test_bloom_members_and_false_positive_rate() -> None:
    held = [h for i in range(200) for h in block_hashes("m", f"tenant {i} " * 40, 64)]
    a = agg.aggregate("p", [_ep("a:1")], now=10, wall=0, hot_blocks=held, prefix_chunk_chars=64)
    assert a.prefix_bloom is not None and a.prefix_chunk_chars == 64
    assert all(a.prefix_bloom.contains(h) for h in held)
    others = [h for i in range(200) for h in block_hashes("m", f"other {i} " * 40, 64)]
    fp = sum(a.prefix_bloom.contains(h) for h in others) / len(others)
    assert fp < 0.05


def test_response_cap_holds_for_a_huge_hot_set() -> None:
    hashes = list(range(1, 2_000_000, 7))  # far more than the filter's bit cap allows at 10 bits each
    a = agg.aggregate("p", [_ep("a:1")], now=10, wall=0, hot_blocks=hashes, prefix_chunk_chars=64)
    assert a.prefix_bloom is not None and a.prefix_bloom.bits == agg.MAX_BLOOM_BITS
    assert len(agg.encode(a)) <= agg.MAX_RESPONSE_BYTES
    with pytest.raises(msgspec.ValidationError):
        agg.decode(b" " * (agg.MAX_RESPONSE_BYTES + 1))


async def test_served_by_kvgate_serve_admin_and_metrics_names() -> None:
    from gateway.conftest import make_config, running_gateway

    cfg = make_config(["127.0.0.1:1", "127.0.0.1:2"], policy="kvgate", extra={"listen": {"adminPort": 0}})
    async with running_gateway(cfg) as gw:
        for ep in gw.pools[0].endpoints():
            ep.metrics.updated_at = time.monotonic()
            ep.metrics.waiting_queue_size = 3
        port = gw.admin_port if gw.admin_port is not None else gw.port
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}{agg.AGGREGATE_PATH}") as r:
                assert r.status == 200
                a = agg.decode(await r.read())
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                text = await r.text()
            async with http.get(f"http://127.0.0.1:{port}{agg.AGGREGATE_PATH}?pool=nope") as r:
                assert r.status == 404
    assert a.name == "p" and a.ready_endpoints == 2 and a.average_queue_size == 3.0
    for name in ("inference_pool_average_queue_size", "inference_pool_average_running_requests",
                 "llm_d_epp_average_kv_cache_utilization", "llm_d_epp_std_dev_queue_size",
                 "llm_d_epp_ready_endpoints", "kvgate_pool_headroom"):  # fmt: skip
        assert f'{name}{{name="p"}}' in text, name


async def test_served_by_kvgate_epp_metrics_port() -> None:
    from kvgate.datalayer.store import EndpointStore
    from kvgate.extproc.context import AddressIndex, build_epp_director
    from kvgate.extproc.server import EppServer, ServerOptions
    from kvgate.extproc.session import SessionContext
    from kvgate.multicluster.export import aggregate_source

    store = EndpointStore.from_addresses(["127.0.0.1:1"], pool="east")
    director = build_epp_director(None, store, policy="kvgate")
    ctx = SessionContext(director, AddressIndex(store), clock=time.monotonic)
    source = aggregate_source("east", store.all, director)
    opts = ServerOptions(host="127.0.0.1", port=0, health_port=None, metrics_port=0)
    server = EppServer(ctx, opts, aggregate=source.body)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.metrics_port}{agg.AGGREGATE_PATH}"
        async with aiohttp.ClientSession() as http, http.get(url) as r:
            assert r.status == 200
            a = agg.decode(await r.read())
    finally:
        await server.stop(0)
    assert a.name == "east" and a.total_endpoints == 1 and a.ready_endpoints == 0
