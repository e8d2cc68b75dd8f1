"""An unanswered cluster's prior is costed in the unit the answered clusters measured (issue #14, session
8): live, the prior (50 ms per speed-1 endpoint) made the unanswered `eu` look 7x faster than the answered
`east` and `west`, whose first answers are cold misses (1.2 s), so `eu` was the prefix home of most tenants
for a fresh gateway's first seconds and got their first requests; those prefixes then moved."""

from __future__ import annotations

import math
import random

import pytest

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.multicluster.clusters import ClusterSpec
from kvgate.multicluster.policies import ClusterRequest, KvgatePolicy
from kvgate.multicluster.state import ClusterState

TENANT = "the shared system prompt of tenant {i}, long enough to fill the prefix home key " * 4


def _state(name: str, ready: int, speed: float, rtt: float) -> ClusterState:
    st = ClusterState(ClusterSpec(name, gateway=f"{name}:80", rtt_ms=rtt))
    st.set_aggregate(
        PoolAggregate(name, 1.0, ready, ready, capacity=ready * speed, headroom=ready * speed,
                      request_slots=8.0 * ready),
        0.0,
    )  # fmt: skip
    return st


def _fleet() -> list[ClusterState]:
    """The live fleet: east 3 x H100 (5 ms), west 2 x H200 (40 ms), eu 1 x A100 (80 ms, labels 0.5)."""
    return [_state("east", 3, 1.0, 5.0), _state("west", 2, 1.4, 40.0), _state("eu", 1, 0.5, 80.0)]


def test_an_unanswered_cluster_is_costed_in_the_unit_the_answered_ones_measured() -> None:
    p = KvgatePolicy(local="east", rng=random.Random(0))
    east, west, eu = fleet = _fleet()
    # Before any answer every cluster is on the prior: its speed ratio from the labels, RTT added.
    p.order(fleet, ClusterRequest(), 0.0)
    assert p.base_ttft(eu) == pytest.approx(0.05 / 0.5 + 0.08)
    # The first answers of a fresh fleet are cold misses, 1.2-1.3 s.
    for st, ttft in ((east, 1.2), (west, 1.3)):
        st.observe_ttft(ttft, 1.0, st.dispatched(0.0))
        st.finished(1, 2.0)
    p.order(fleet, ClusterRequest(), 1.0)
    # So eu, 2x slower than east per endpoint by its labels, costs more than east for a request, and is
    # home to about its throughput's share of the tenants, not most of them (73 % live with the raw prior).
    assert p.base_ttft(eu) > p.base_ttft(east)
    homes = [p.home([east, west, eu], ClusterRequest("m", TENANT.format(i=i))) for i in range(300)]
    assert homes.count("eu") / 300 < 0.2
    k = math.sqrt((1.2 - 0.005) / 0.05 * (1.3 - 0.04) / (0.05 / 1.4))
    assert p.prior_scale == pytest.approx(k)
    assert p.base_ttft(eu) == pytest.approx(0.05 / 0.5 * k + 0.08)
    # Answered, a cluster is its own floor, whatever the others measured.
    eu.observe_ttft(7.0, 9.0, eu.dispatched(2.0))
    p.order(fleet, ClusterRequest(), 9.0)
    assert p.base_ttft(eu) == 7.0
