"""qa25 F1: a member cluster whose aggregate reports impossible numbers (headroom far above its capacity)
takes every request of the global gateway's kvgate policy, past its own slots, however many this gateway
sent it since the snapshot (its cost stays 0: the anti-herding term never catches up).

A legit idle cluster of the same shape (headroom == capacity, 16 slots) shares with the busy one; the
garbage one takes 200 of 200. The aggregate is decoded by ``kvgate.datalayer.aggregate.decode``, the
fetcher's own decoder, which accepted it. (QA's tests, moved from the review by fixqa25, then fixqa25's:
each impossible number refused at decode, the policy's clamp, the fetcher's count and log.)"""

from __future__ import annotations

import contextlib
import logging
import random
from collections import Counter

import msgspec
import pytest
from aiohttp import web

from gateway.handler_server import serve_app
from kvgate.datalayer.aggregate import PoolAggregate, build_bloom, decode, encode
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.fetcher import Fetcher
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy
from kvgate.multicluster.state import ClusterState

BUSY = (b'{"name":"p","snapshot_time":1.0,"ready_endpoints":4,"total_endpoints":4,'
        b'"average_kv_cache_utilization":0.5,"average_queue_size":2.0,"capacity":4.0,"headroom":1.0,'
        b'"request_slots":16.0,"metrics_age_s":0.1}')  # fmt: skip


def _other(headroom: str) -> bytes:
    return (
        '{"name":"p","snapshot_time":1.0,"ready_endpoints":4,"total_endpoints":4,"capacity":4.0,'
        f'"headroom":{headroom},"request_slots":16.0,"metrics_age_s":0.1}}'
    ).encode()


def _firsts(other: bytes, n: int = 200) -> Counter[str]:
    p = KvgatePolicy(rng=random.Random(1))
    busy = ClusterState(ClusterSpec("busy", gateway="busy:80"))
    busy.set_aggregate(decode(BUSY), 0.0)
    odd = ClusterState(ClusterSpec("odd", gateway="odd:80"))
    with contextlib.suppress(Exception):  # refused at decode: an unknown cluster
        odd.set_aggregate(decode(other), 0.0)
    got: Counter[str] = Counter()
    for _ in range(n):
        first = p.order([busy, odd], ClusterRequest(), 0.0)[0]
        got[first.name] += 1
        first.dispatched()
    return got


def test_idle_cluster_shares_with_a_busy_one() -> None:
    """The baseline (passes on main): a truthful idle cluster of 16 slots does not take all 200."""
    got = _firsts(_other("4.0"))
    assert got["busy"] > 0, got


def test_headroom_above_capacity_does_not_take_every_request() -> None:
    """Fails on main: headroom 1e12 with capacity 4 -> cost 0.0, 200 of 200 requests to that cluster
    (16 slots), none to the other."""
    got = _firsts(_other("1e12"))
    assert got["busy"] > 0, f"a cluster reporting headroom 1e12 > capacity 4 took all: {dict(got)}"


# --- fixqa25: each impossible number refused at decode, the policy's clamp, the fetcher's count ----------
GOOD = (
    '{"name":"p","snapshot_time":1.0,"ready_endpoints":4,"total_endpoints":4,"capacity":4.0,'
    '"headroom":2.0,"request_slots":16.0,"metrics_age_s":0.1,"average_queue_size":1.0%s}'
)


@pytest.mark.parametrize(
    "extra, field",
    [
        (',"headroom":4.5', "headroom"),
        (',"average_queue_size":-1e9', "average_queue_size"),
        (',"request_slots":-5', "request_slots"),
        (',"metrics_age_s":-1e9', "metrics_age_s"),
        (',"capacity":-4.0', "capacity"),
        (',"ready_endpoints":5', "ready_endpoints"),
        (',"inflight_requests":-1', "inflight_requests"),
        (',"ready_by_gpu":{"h100":9}', "ready_by_gpu"),
        (',"prefix_chunk_chars":0', "prefix_chunk_chars"),
        (',"prefix_bloom":{"bits":1024,"k":5,"data":"AAAA"}', "prefix_bloom"),
        (',"prefix_bloom":{"bits":1000,"k":5,"data":"AAAA"}', "prefix_bloom"),
    ],
)
def test_an_impossible_aggregate_is_refused_at_decode_naming_the_field(extra: str, field: str) -> None:
    decode((GOOD % "").encode())  # (the same without it: taken)
    with pytest.raises(msgspec.ValidationError, match=field):
        decode((GOOD % extra).encode())


def test_kvgates_own_bloom_and_an_older_kvgates_aggregate_are_taken() -> None:
    bloom = build_bloom(list(range(100)))
    agg = decode(encode(PoolAggregate("p", 1.0, 1, 2, capacity=1.0, headroom=1.0, prefix_chunk_chars=64,
                                      prefix_bloom=bloom, ready_by_gpu={"h100": 1})))  # fmt: skip
    assert agg.prefix_bloom is not None and agg.prefix_bloom.contains(7)
    decode(b'{"name":"p","snapshot_time":1.0,"ready_endpoints":0,"total_endpoints":0}')


def test_the_policy_clamps_an_impossible_aggregate_set_in_process() -> None:
    """An aggregate that never went through ``decode`` (a benchmark's, a test's): headroom over capacity
    counts as capacity (idle), so the busy cluster still gets requests."""
    p = KvgatePolicy(rng=random.Random(1))
    busy = ClusterState(ClusterSpec("busy", gateway="busy:80"))
    busy.set_aggregate(decode(BUSY), 0.0)
    odd = ClusterState(ClusterSpec("odd", gateway="odd:80"))
    odd.set_aggregate(PoolAggregate("p", 1.0, 4, 4, capacity=4.0, headroom=1e12, request_slots=16.0,
                                    metrics_age_s=0.1, average_queue_size=-1e9), 0.0)  # fmt: skip
    got: Counter[str] = Counter()
    for _ in range(200):
        first = p.order([busy, odd], ClusterRequest(), 0.0)[0]
        got[first.name] += 1
        first.dispatched()
    assert got["busy"] > 0, dict(got)


async def test_the_fetcher_refuses_counts_and_logs_an_impossible_aggregate_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Real HTTP on loopback: a cluster whose aggregate says headroom over capacity stays unknown (no
    snapshot, the reason as its fetch error), each refused answer counted (``on_refused``), the warning
    logged once while the reason stays."""

    async def handle(_req: web.Request) -> web.Response:
        return web.Response(body=_other("1e12"), content_type="application/json")

    app = web.Application()
    app.router.add_get("/aggregate", handle)
    runner, port = await serve_app(app)
    st = ClusterState(ClusterSpec("odd", aggregate=f"http://127.0.0.1:{port}/aggregate"))
    fetcher = Fetcher(lambda: [st], interval_s=3600, timeout_s=5.0)
    refused: list[str] = []
    fetcher.on_refused = refused.append
    caplog.set_level(logging.WARNING, "kvgate.multicluster.fetcher")
    try:
        await fetcher.start()
        await fetcher.refresh()
    finally:
        await fetcher.stop()
        await runner.cleanup()
    assert st.aggregate is None
    assert st.fetch_error is not None and "headroom" in st.fetch_error, st.fetch_error
    assert refused == ["odd", "odd"]
    warned = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(warned) == 1 and "headroom" in warned[0].getMessage(), [r.getMessage() for r in warned]
