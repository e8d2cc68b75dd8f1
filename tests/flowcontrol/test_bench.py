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
