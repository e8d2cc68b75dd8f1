"""What ``/v1/clusters`` (``GlobalRouter.summary``) reports of the kvgate policy's learnt state: the live
benchmark samples it into its rows (``learnt``) to trace why requests left their prefix home."""

from __future__ import annotations

from kvgate.datalayer.aggregate import PoolAggregate
from kvgate.multicluster.clusters import ClustersConfig, ClusterSpec
from kvgate.multicluster.policies import ClusterRequest
from kvgate.multicluster.router import GlobalRouter

TENANT = "system prompt of a tenant, long enough for its prefix home key to be a full one " * 6


def test_summary_reports_what_the_policy_learnt_and_where_it_sent_requests_away_from_home() -> None:
    now = [10.0]
    cfg = ClustersConfig((ClusterSpec("a", gateway="a:80"), ClusterSpec("b", gateway="b:80")), ttl_s=5.0)
    router = GlobalRouter(cfg, "kvgate", clock=lambda: now[0], seed=0)
    for name in ("a", "b"):
        router.states[name].set_aggregate(
            PoolAggregate(name, 1.0, 2, 2, capacity=2.0, headroom=2.0, request_slots=16.0), now[0]
        )
    st = router.states["a"]
    st.observe_ttft(0.3, now[0], st.dispatched(now[0] - 0.3))
    for i in range(20):
        router.order(ClusterRequest("m", f"{TENANT} tenant {i}", stream=True))
    got = {c["name"]: c for c in router.summary()}
    assert got["a"]["ttft_floor_s"] == 0.3 and got["b"]["ttft_floor_s"] is None
    assert got["a"]["miss_cost_s"] is None and got["a"]["hit_n"] == 0
    assert got["a"]["model_bias"] == 1.0
    assert all(isinstance(got[n]["home_weight"], float) and got[n]["home_weight"] > 0 for n in "ab")
    assert sum(int(got[n]["first_to"]) for n in "ab") == 20
    assert all(0 <= int(got[n]["first_away"]) <= int(got[n]["first_to"]) for n in "ab")
    # Another policy: no learnt state to report beyond the cluster's own.
    other = GlobalRouter(cfg, "round-robin", clock=lambda: now[0])
    assert {c["name"]: c["first_to"] for c in other.summary()} == {"a": None, "b": None}
