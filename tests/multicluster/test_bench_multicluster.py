"""``kvgate bench multicluster`` on a tiny scale: every policy runs, the loss phase retries instead of losing,
and kvgate stops sending to the dead cluster while the llm-d-hub-like policy keeps paying its timeouts."""

from __future__ import annotations

import pytest

pytest.importorskip("numpy")

from kvgate.bench.multicluster import MultiClusterSim, RunConfig, Workload

TINY = Workload(tenants=4, system_prompt_len=256, question_len=32, output_len=16)


@pytest.mark.parametrize("policy", ["kvgate", "llm-d-hub", "round-robin", "active-passive"])
def test_steady_run(policy: str) -> None:
    row = MultiClusterSim(RunConfig(policy, 20.0, duration=4.0, warmup=1.0, workload=TINY)).run()
    assert row["ok"] > 40 and row["lost"] == 0 and row["ttft_p90"] is not None
    assert sum(row["served_by"].values()) == row["ok"]


def test_cluster_loss_retries_and_kvgate_avoids_the_dead_cluster() -> None:
    rows = {
        p: MultiClusterSim(RunConfig(p, 20.0, duration=9.0, warmup=1.0, loss=True, workload=TINY)).run()
        for p in ("kvgate", "llm-d-hub")
    }
    for row in rows.values():
        assert row["phase"] == "loss" and row["lost"] == 0
    assert rows["kvgate"]["retries"] < rows["llm-d-hub"]["retries"]


def test_live_bench_gateways_get_distinct_policy_seeds() -> None:
    """``--gateways N``: each global gateway its own cluster-policy seed (the same seed would make the
    same random picks), reproducible from the run's --seed."""
    from kvgate.bench.multicluster_live import gateway_seed

    for seed in (0, 1):
        assert len({gateway_seed(seed, g) for g in range(4)}) == 4
    assert not {gateway_seed(0, g) for g in range(4)} & {gateway_seed(1, g) for g in range(4)}


def test_a_retried_attempts_ttft_evidence_runs_from_its_own_dispatch() -> None:
    """As the router measures it: the gateway's TTFT evidence for the cluster that answered runs from that
    attempt's dispatch, not from the request's arrival (the dead cluster's connect timeout is not the
    answering cluster's TTFT); the client's TTFT still counts it."""
    from kvgate.bench.multicluster import _Req

    sim = MultiClusterSim(RunConfig("kvgate", 1.0, duration=1.0, warmup=0.0, gateways=1, workload=TINY))
    sim.clusters["west"].alive = False
    spec = next(TINY.stream(0, 1))
    r = _Req(spec, "r0", 0.0, 0, ["west", "east"])
    sim.live[r.rid] = r
    sim._attempt(r)
    sim.clock.run_until(30.0)
    east = sim.gw_states[0]["east"]
    timeout = sim.cfg.connect_timeout
    assert east.ttft_floor_s is not None and 0.0 < east.ttft_floor_s < timeout
    assert sim.collectors["steady"].summary(duration=1.0)["ttft_p50"] > timeout


def test_live_trace_names_what_makes_the_p90() -> None:
    from kvgate.bench.multicluster_live import Result, after_return, trace_kinds

    def r(start: float, cluster: str, ttft: float | None, group: str, cached: int) -> Result:
        return Result(start, cluster, ttft, group=group, prompt_tokens=100, cached_tokens=cached)

    res = [
        r(0.0, "east", 1.3, "g0", 0),  # warm-up: g0's first touch, not measured
        r(10.0, "east", 0.3, "g0", 90),  # hit
        r(11.0, "west", 1.4, "g0", 0),  # g0 spilled to a second cluster
        r(12.0, "east", 1.5, "g0", 10),  # repeat miss in east
        r(13.0, "west", 1.2, "g1", 0),  # g1's first touch
        r(14.0, "east", None, "g2", 0),  # no token
    ]
    t = trace_kinds(res, warmup=5.0, timeout=20.0)
    assert t["counts"] == {"hit": 1, "second": 1, "repeat": 1, "first": 1, "none": 1}
    assert t["p90_set"] == {"none@east": 1}
    assert after_return(res, "west", 11.0) == {"sent": 2, "of": 3, "ttft_p50": 1.4, "others_p50": 1.5}
