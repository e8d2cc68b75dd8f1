"""The live benchmark's offered load: a fraction of the capacity measured on the virtual-clock fleet."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import pytest
from rich.console import Console

from kvgate.bench import live
from kvgate.bench.fleetsim import ReplicaSpec
from kvgate.bench.sweep import probe_capacity


def _args(**kw: Any) -> argparse.Namespace:
    base = dict(
        quick=False, qps=None, duration=None, seed=3, load_fraction=None, time_scale=None, sim_procs=None
    )
    return argparse.Namespace(**(base | kw))


def test_scenario_is_the_live_fleet_and_workload() -> None:
    spec = live.FleetSpec(replicas=3, profile="llama3-8b-h100", num_gpu_blocks=1500, max_num_seqs=64)
    load = live.LiveLoad(qps=1.0, duration=1.0, num_groups=5, system_prompt_len=64, question_len=8, seed=7)
    sc = live.live_scenario(spec, load)
    assert sc.replicas == [ReplicaSpec("llama3-8b-h100", 3, {"num_gpu_blocks": 1500, "max_num_seqs": 64})]
    # The probe draws the very requests the live run sends (same generator, parameters and seed).
    probe = [(s.prompt_ids, s.max_tokens, s.group) for s in sc.workload(load.seed, 20)]
    sent = [(s.prompt_ids, s.max_tokens, s.group) for s in load.specs(20)]
    assert probe == sent and len({g for _, _, g in sent}) > 1
    assert sc.probe_policies == list(live.CAPACITY_PROBE_POLICIES) and sc.slo_ttft == load.slo_ttft
    # Profile defaults stay defaults (no override) when the fleet leaves them at 0.
    assert live.live_scenario(live.FleetSpec(), load).replicas[0].overrides == {}


def test_measured_capacity_is_the_best_probe() -> None:
    # A small fleet and short probe so the real fleet simulator runs in about a second.
    spec = live.FleetSpec(replicas=2, profile="llama3-8b-h100")
    load = live.LiveLoad(
        qps=1.0, duration=1.0, num_groups=4, system_prompt_len=256, question_len=16, output_len=8
    )
    cap = live.measure_capacity(spec, load, seed=1, duration=4.0)
    assert set(cap.probes) == set(live.CAPACITY_PROBE_POLICIES)
    assert cap.req_per_s == max(cap.probes.values()) == cap.probes[cap.policy]
    assert 0 < cap.req_per_s < cap.probe_qps
    # Deterministic per seed: the same probe run by hand gives the same figure.
    sc = live.live_scenario(spec, load)
    assert probe_capacity(sc, cap.policy, 1, 4.0) == cap.req_per_s


def test_plan_load_offers_the_fraction_of_measured_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[live.FleetSpec, int]] = []

    def fake(
        spec: live.FleetSpec, load: live.LiveLoad, seed: int = 0, duration: float = 0.0
    ) -> live.Capacity:
        seen.append((spec, seed))
        return live.Capacity(150.0, "reference", {"reference": 150.0, "kvgate": 90.0})

    monkeypatch.setattr(live, "measure_capacity", fake)
    spec = live.FleetSpec(time_scale=0.25)
    load, cap = live.plan_load(_args(load_fraction=0.6), spec, Console(quiet=True))
    assert cap is not None and seen == [(spec, 3)]
    assert load.qps == pytest.approx(90.0) and load.load_fraction == 0.6 and load.capacity == 150.0
    assert live.wall_qps(load, spec) == pytest.approx(0.6 * 150.0 * 0.25)
    load, _ = live.plan_load(_args(), spec, Console(quiet=True))
    assert load.load_fraction == live.DEFAULT_LOAD_FRACTION
    assert load.qps == pytest.approx(live.DEFAULT_LOAD_FRACTION * 150.0)
    # --qps overrides: no probe, no fraction.
    load, cap = live.plan_load(_args(qps=12.0), spec, Console(quiet=True))
    assert (load.qps, load.load_fraction, load.capacity, cap) == (12.0, None, None, None) and len(seen) == 2


def test_outputs_record_capacity_fraction_and_rates() -> None:
    spec = live.FleetSpec(time_scale=0.5)
    load = live.LiveLoad(qps=80.0, duration=6.0, load_fraction=0.8, capacity=100.0)
    cap = live.Capacity(100.0, "reference", {"reference": 100.0, "kvgate": 70.0})
    row = {"router": "r", "policy": "r", "requests": 600, "ttft_p90": 0.1, "errors": 0}
    payload = live.build_payload(spec, load, cap, [row], repeats=1, not_run={}, wall_s=1.0)
    assert payload["capacity"]["req_per_s"] == 100.0 and payload["load_fraction"] == 0.8
    assert payload["offered_qps"] == 80.0 and payload["offered_wall_qps"] == pytest.approx(40.0)
    md = live.markdown(payload)
    assert "80 req/s = 0.8 x" in md and "100.0 req/s" in md and "40.0 req/s of wall time" in md
    fixed = live.build_payload(spec, live.LiveLoad(qps=12.0, duration=6.0), None, [row], 1, {}, 1.0)
    assert fixed["capacity"] is None and "fixed with --qps" in live.markdown(fixed)


def test_split_replicas_over_processes() -> None:
    assert live._split(4, 1) == [4] and live._split(4, 2) == [2, 2] and live._split(5, 2) == [3, 2]
    assert live._split(2, 8) == [1, 1]
    for n, k in itertools.product(range(1, 9), range(1, 5)):
        assert sum(live._split(n, k)) == n and min(live._split(n, k)) >= 1


def test_lag_summary_over_the_window() -> None:
    before = [{"steps": 100, "steps_late": 10, "step_lag_sum_s": 0.5, "step_lag_max_s": 0.1}] * 2
    after = [
        {"steps": 300, "steps_late": 30, "step_lag_sum_s": 1.5, "step_lag_max_s": 0.2},
        {"steps": 200, "steps_late": 10, "step_lag_sum_s": 0.5, "step_lag_max_s": 0.3},
    ]
    got = live.lag_summary(before, after, time_scale=0.5)
    assert got["sim_steps"] == 300 and got["sim_late_frac"] == pytest.approx(20 / 300)
    assert got["sim_lag_mean_ms"] == pytest.approx(1.0 / 300 * 0.5 * 1000)
    assert got["sim_lag_max_ms"] == pytest.approx(150.0)
    assert live.lag_summary(before, before, 1.0)["sim_late_frac"] is None


def test_select_targets_by_policy_then_kind() -> None:
    every = [*live.KVGATE_TARGETS, *live.PEER_TARGETS]
    assert live.select_targets(every, None) == every
    names = [t.name for t in live.select_targets(every, ["kvgate", "reference-precise"])]
    assert names == ["kvgate (default)", "kvgate reference + precise"]
    peers = live.select_targets(every, ["sglang-router", "cache_aware"])
    # "cache_aware" is a policy (both peers'); "sglang-router" a kind (both of its targets).
    assert {t.name for t in peers} == {
        "sglang-router cache_aware",
        "sglang-router round_robin",
        "vllm-router cache_aware",
    }


def test_markdown_flags_rows_whose_simulator_fell_behind() -> None:
    spec, load = live.FleetSpec(), live.LiveLoad(qps=10.0, duration=5.0)
    rows = [
        {"router": "a", "policy": "a", "requests": 500, "sim_lag_mean_ms": 1.0, "sim_late_frac": 0.2},
        {"router": "b", "policy": "b", "requests": 500, "sim_lag_mean_ms": 11.0, "sim_late_frac": 0.8},
    ]
    md = live.markdown(live.build_payload(spec, load, None, rows, 1, {}, 1.0))
    (line_a,) = [x for x in md.splitlines() if x.startswith("- a:")]
    (line_b,) = [x for x in md.splitlines() if x.startswith("- b:")]
    assert "fell behind" not in line_a and "fell behind" in line_b and "80.0% of steps late" in line_b
