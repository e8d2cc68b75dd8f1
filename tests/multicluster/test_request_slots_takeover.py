"""rev-fixqa25 R3: qa25 F1's takeover is still open through ``request_slots``, which ``aggregate.impossible``
bounds only below (>= 0) and ``KvgatePolicy`` does not clamp. The kvgate policy's utilisation is
``(capacity - headroom)/capacity + (sent_since_snapshot + 1) / request_slots`` for an idle cluster, so a
member saying ``request_slots: 1e300`` (4 endpoints, capacity 4, headroom 4: all within the new checks)
costs ~0 whatever was sent there: 1000 of 1000 requests, the busy member none, exactly F1's symptom. kvgate's
own aggregate never says more than ``MAX_BATCH`` (64) slots per ready endpoint (``measured_slots`` /
``endpoint_slots`` cap it), so a truthful 4-endpoint pool has at most 256; the same takeover happens at
1e6. (A truthful idle cluster with 16 slots takes 108 of 200: QA's baseline.) Suggested: clamp in the
policy (``request_slots`` to ``MAX_BATCH * ready_endpoints``), rather than refusing at decode (a newer
kvgate with a larger MAX_BATCH would then be refused). Fixed so: ``KvgatePolicy.request_share``."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kvgate.datalayer.aggregate import MAX_BATCH, decode
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy
from kvgate.multicluster.state import ClusterState

BUSY = (b'{"name":"p","snapshot_time":1.0,"ready_endpoints":4,"total_endpoints":4,'
        b'"average_kv_cache_utilization":0.5,"average_queue_size":2.0,"capacity":4.0,"headroom":1.0,'
        b'"request_slots":16.0,"metrics_age_s":0.1}')  # fmt: skip


def _picks(slots: str) -> Counter[str]:
    odd_raw = ('{"name":"p","snapshot_time":1.0,"ready_endpoints":4,"total_endpoints":4,"capacity":4.0,'
               f'"headroom":4.0,"request_slots":{slots},"metrics_age_s":0.1}}').encode()  # fmt: skip
    p = KvgatePolicy(rng=random.Random(1))
    busy = ClusterState(ClusterSpec("busy", gateway="busy:80"))
    busy.set_aggregate(decode(BUSY), 0.0)
    odd = ClusterState(ClusterSpec("odd", gateway="odd:80"))
    odd.set_aggregate(decode(odd_raw), 0.0)  # taken: passes aggregate.impossible
    got: Counter[str] = Counter()
    for _ in range(1000):  # (a truthful 256-slot idle pool: ~192 first, then shares)
        first = p.order([busy, odd], ClusterRequest(), 0.0)[0]
        got[first.name] += 1
        first.dispatched()
    return got


@pytest.mark.parametrize("slots", ["1e300", "1e6"])
def test_huge_request_slots_do_not_take_every_request(slots: str) -> None:
    got = _picks(slots)
    assert got["busy"] > 0, f"request_slots {slots} on 4 endpoints took every request: {dict(got)}"
    # Costed as the most a kvgate of 4 endpoints reports (MAX_BATCH each): the same picks, seed for seed.
    assert got == _picks(str(MAX_BATCH * 4)), (dict(got), dict(_picks(str(MAX_BATCH * 4))))
