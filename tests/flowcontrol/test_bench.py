"""`kvgate bench flowcontrol` runs end to end (one replica, a few virtual seconds); no figures asserted."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvgate.bench.cli import main
from kvgate.bench.flowcontrol_bench import engine_priority


def test_bench_flowcontrol_writes_every_arm_and_mix(tmp_path: Path) -> None:
    args = ["flowcontrol", "--replicas", "1", "--duration", "4", "--warmup", "1", "--out", str(tmp_path)]
    assert main(args) == 0
    doc = orjson.loads((tmp_path / "flowcontrol.json").read_bytes())
    assert set(doc["runs"]) == {
        f"{a}/{m}" for a in ("none", "reference", "kvgate") for m in ("calm", "even", "flood")
    }
    flood = doc["runs"]["kvgate/flood"]
    assert flood["requests"] > 0 and set(flood["bands"]) == {"critical (10)", "interactive (0)", "batch (-1)"}
    assert doc["command"].startswith("kvgate bench flowcontrol")


def test_bench_flowcontrol_reserve_arm(tmp_path: Path) -> None:
    args = ["flowcontrol", "--replicas", "1", "--duration", "4", "--warmup", "1", "--arms", "kvgate-reserve",
            "--headroom", "0.25", "--headroom-on", "pending", "--engine-priority",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    doc = orjson.loads((tmp_path / "flowcontrol.json").read_bytes())
    assert set(doc["runs"]) == {f"kvgate-reserve/{m}" for m in ("calm", "even", "flood")}
    assert doc["runs"]["kvgate-reserve/flood"]["requests"] > 0


def test_engine_priority_orders_band_then_share_lower_first_as_vllm() -> None:
    # vLLM's priority scheduler serves the LOWER value first: sort ascending = service order.
    reqs = [
        ("sheddable over", -1, True),
        ("standard over", 0, True),
        ("critical under", 10, False),
        ("sheddable under", -1, False),
        ("critical over", 10, True),
        ("standard under", 0, False),
    ]
    order = [name for name, _band, _over in sorted(reqs, key=lambda r: engine_priority(r[1], r[2]))]
    assert order == ["critical under", "critical over", "standard under", "standard over",
                     "sheddable under", "sheddable over"]  # fmt: skip
    # Over its share a flow never drops below the next band down, nor overtakes an under-share peer.
    assert engine_priority(10, True) < engine_priority(0, False)
    assert engine_priority(0, False) < engine_priority(0, True)


def test_bench_flowcontrol_ttft_target_arm(tmp_path: Path) -> None:
    args = ["flowcontrol", "--replicas", "2", "--duration", "4", "--warmup", "1", "--arms", "kvgate-reserve",
            "--headroom", "0.75", "--ttft-target", "0.05", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    doc = orjson.loads((tmp_path / "flowcontrol.json").read_bytes())
    flood = doc["runs"]["kvgate-reserve/flood"]
    assert flood["requests"] > 0
    assert 0.0 <= flood["headroom_mean"] <= 0.75  # sampled at each scrape, within its range


def test_a_suffixed_arm_keeps_its_base_arm() -> None:
    from kvgate.bench.flowcontrol_bench import arm_config

    for arm in ("kvgate-preempt", "kvgate-preempt-feasible", "kvgate-preempt-slo-feasible"):
        assert arm_config(arm, 10.0)["flowControl"].get("preemption") is True, arm
    feasible = arm_config("kvgate-preempt-feasible", 10.0)["flowControl"]
    assert feasible["orderingPolicy"] == "slo-feasible"
    assert arm_config("kvgate-reserve-feasible", 10.0)["flowControl"]["fairShareHeadroom"] == 0.25
    assert "preemption" not in arm_config("kvgate-feasible", 10.0)["flowControl"]


def test_the_reference_arm_gates_by_the_reference_rule_alone() -> None:
    """Its utilization detector does not carry a quiet page forward (kvgate's ownLoadStalenessThreshold),
    so live its pool keeps the 0.1 s quiet scrape cadence the reference's 0.2 s staleness needs."""
    from kvgate.bench.flowcontrol_bench import arm_config
    from kvgate.config.director import build_director
    from kvgate.config.picker import parse_config
    from kvgate.datalayer.store import EndpointStore

    director = build_director(parse_config(arm_config("reference", 30.0)), EndpointStore())
    assert director.scrape_bound() == 0.2


def test_running_reserve_reaches_both_benches_configs(tmp_path: Path) -> None:
    from kvgate.bench.flowcontrol_bench import arm_config
    from kvgate.bench.flowcontrol_live import gateway_config

    fc = arm_config("kvgate-reserve-feasible", 10.0, headroom_on="pending", running_reserve=True)
    assert fc["flowControl"]["fairShareRunningReserve"] is True
    assert "fairShareRunningReserve" not in arm_config("kvgate-reserve", 10.0)["flowControl"]
    live = gateway_config("kvgate-reserve", ["http://a"], 10.0, 16, 0.75, "pending", 0.0125, False, True)
    assert live["pools"][0]["endpointPickerConfig"]["flowControl"]["fairShareRunningReserve"] is True
    args = ["flowcontrol", "--replicas", "2", "--max-num-seqs", "4", "--duration", "4", "--warmup", "1",
            "--arms", "kvgate-reserve", "--headroom", "0.75", "--headroom-on", "pending", "--ttft-target",
            "0.05", "--running-reserve", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    doc = orjson.loads((tmp_path / "flowcontrol.json").read_bytes())
    assert doc["runs"]["kvgate-reserve/flood"]["requests"] > 0


def test_over_goal_splits_the_quiet_requests_over_the_line_by_where_they_waited() -> None:
    from kvgate.bench.flowcontrol_bench import Outcome, Run, over_goal

    def o(start: float, epp: float, srv: float, step: float) -> Outcome:
        return Outcome("t1", start, ttft=epp + srv + step, sent=start + epp, scheduled=start + epp + srv)

    run = Run("x", [o(10, 0.0, 0.005, 0.027), o(11, 0.1, 0.005, 0.027), o(12, 0.0, 0.05, 0.027),
                    o(13, 0.0, 0.0, 0.053), o(1, 0.5, 0.0, 0.027), Outcome("t0", 14, ttft=9.0)])  # fmt: skip
    got = over_goal(run, ("t1",), 0.034, 5.0)  # the line: 51 ms; the one at t=1 is before 5 s
    assert got["over_share"] == 0.75
    assert (got["kvgate_queue_share"], got["server_queue_share"], got["step_share"]) == (0.25, 0.25, 0.25)
    assert abs(got["mean_kvgate_queue_s"] - 0.1 / 3) < 1e-9


def test_bench_flowcontrol_default_out_is_not_the_tracked_docs_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without --out it wrote docs/benchmarks/flowcontrol.json, the tracked published figures (run from
    # the repository root, any tuning run overwrote them). Now the git-ignored results/flowcontrol.
    monkeypatch.chdir(tmp_path)
    args = ["flowcontrol", "--replicas", "1", "--duration", "2", "--warmup", "1", "--arms", "kvgate"]
    assert main(args) == 0
    assert not (tmp_path / "docs").exists()
    doc = orjson.loads((tmp_path / "results" / "flowcontrol" / "flowcontrol.json").read_bytes())
    assert set(doc["runs"]) == {f"kvgate/{m}" for m in ("calm", "even", "flood")}


def test_batch_cap_sets_the_batch_bands_limit_in_both_arms() -> None:
    from kvgate.bench.flowcontrol_bench import arm_config

    for arm in ("reference", "kvgate-reserve-feasible"):
        assert arm_config(arm, 30.0, batch_cap=5)["flowControl"]["priorityBands"] == [
            {"priority": -1, "maxRequests": 5}
        ]
        assert "priorityBands" not in arm_config(arm, 30.0)["flowControl"]


def test_frontier_mode_runs_every_setting_and_compares_at_the_same_shed_rate(tmp_path: Path) -> None:
    from kvgate.bench.frontier import GRID, Point, attainment_at, frontier

    args = ["flowcontrol", "--replicas", "1", "--duration", "6", "--warmup", "1", "--load", "1.5",
            "--arms", "reference,kvgate", "--frontier", "ttl=0.05,30", "--frontier", "kvgate:batch-cap=1",
            "--seeds", "0,1", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    doc = orjson.loads((tmp_path / "flowcontrol-frontier.json").read_bytes())
    assert doc["command"].startswith("kvgate bench flowcontrol") and set(doc["seeds"]) == {"0", "1"}
    for cell in doc["seeds"].values():
        arms = cell["arms"]
        # The own setting (ttl 30, the --ttl default) once, then the swept ones not equal to it.
        assert [(r["knob"], r["value"], r["default"]) for r in arms["reference"]["settings"]] == [
            ("ttl", 30.0, True), ("ttl", 0.05, False)
        ]  # fmt: skip
        assert [(r["knob"], r["value"]) for r in arms["kvgate"]["settings"]] == [
            ("ttl", 30.0), ("ttl", 0.05), ("batch-cap", 1.0)
        ]  # fmt: skip
        for a in arms.values():  # a 50 ms TTL at 150 % load sheds by TTL; the own 30 s one less
            own, short = a["settings"][0], a["settings"][1]
            assert short["shed_503"] > own["shed_503"] and short["shed_rate"] > own["shed_rate"]
        assert arms["kvgate"]["settings"][2]["shed_429"] > 0  # one queued batch request at most
        for c in cell["compare"]:
            theirs = [Point(r["knob"], r["value"], r["shed_rate"], r["slo_attainment"])
                      for r in arms[c["against"]]["settings"]]  # fmt: skip
            at = attainment_at(frontier(theirs), c["shed_rate"])
            assert c["frontier_at"] == at
            assert c["delta"] == (None if at is None else c["attainment"] - at)
        (g,) = cell["frontier_gap"]  # the later arm against the earlier one, at each grid shed rate
        assert (g["arm"], g["against"]) == ("kvgate", "reference")
        mine = [
            Point(r["knob"], r["value"], r["shed_rate"], r["slo_attainment"])
            for r in arms["kvgate"]["settings"]
        ]
        theirs = [Point(r["knob"], r["value"], r["shed_rate"], r["slo_attainment"])
                  for r in arms["reference"]["settings"]]  # fmt: skip
        for at in g["at"]:
            a, b = (
                attainment_at(frontier(mine), at["shed_rate"]),
                attainment_at(frontier(theirs), at["shed_rate"]),
            )
            assert at["delta"] == (None if a is None or b is None else a - b)
    assert len(doc["gap_summary"]) == len(GRID)
    pairs = {(s["arm"], s["against"]) for s in doc["summary"]}
    assert pairs == {("reference", "kvgate"), ("kvgate", "reference")}
    assert all(s["above"] + s["not_above"] + s["out_of_reach"] == 2 for s in doc["summary"])


def test_frontier_mode_refuses_an_unknown_knob(tmp_path: Path) -> None:
    args = ["flowcontrol", "--replicas", "1", "--duration", "2", "--frontier", "speed=1",
            "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit, match="knob must be one of"):
        main(args)


@pytest.mark.parametrize(
    ("knob", "value", "expect"),
    [
        ("", 0.0, {"ttl": 30.0, "slo_confidence": 1.0, "batch_cap": 0}),
        ("ttl", 2.0, {"ttl": 2.0, "slo_confidence": 1.0, "batch_cap": 0}),
        ("batch-cap", 5.0, {"ttl": 30.0, "slo_confidence": 1.0, "batch_cap": 5}),
        ("slo-confidence", 0.5, {"ttl": 30.0, "slo_confidence": 0.5, "batch_cap": 0}),
    ],
)
def test_a_frontier_setting_changes_its_knob_alone(
    knob: str, value: float, expect: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from kvgate.bench import flowcontrol_bench as fb

    seen: dict[str, object] = {}

    def fake(arm: str, replicas: int, profile: str, seed: int, ttl: float, **kw: object) -> None:
        seen.update(kw, ttl=ttl, arm=arm, seed=seed)

    monkeypatch.setattr(fb, "FlowSim", fake)
    args = argparse.Namespace(
        replicas=2, profile="p", ttl=30.0, max_num_seqs=16, max_pending=2, headroom=0.75,
        headroom_on="pending", ttft_target=0.05, engine_priority=False, slo_confidence=1.0, slo_first=False,
        running_reserve=True, free_slot_pick=False, ttft_confidence=None, critical_slo=1.0,
    )  # fmt: skip
    fb.sim_from_args(args, "kvgate-reserve-slo-feasible", 3, knob, value)
    assert {k: seen[k] for k in expect} == expect
    assert seen["arm"] == "kvgate-reserve-slo-feasible" and seen["seed"] == 3
    assert seen["running_reserve"] is True and seen["headroom"] == 0.75
