"""Precise prefix scoring in the fleet simulator: the engines' KV events feed the scorer's block index."""

from __future__ import annotations

import pytest

from kvgate.bench import workloads
from kvgate.bench.fleetsim import FleetConfig, FleetSim, ReplicaSpec
from kvgate.bench.precise import PRECISE_POLICIES, main


def _sim(policy: str, seed: int, kv_event_delay: float = 0.002, pressure: bool = False) -> FleetSim:
    """Three replicas under ``policy`` sent a seeded shared-prefix stream (512-token system prompts,
    32-token questions): 400 requests of 10 groups at 40 req/s, or under ``pressure`` long answers in a
    small cache (decode blocks keep evicting the customers' contexts): 24 of 6 groups at 8 req/s."""
    blocks, qps, duration, count, groups, output_len = (
        (120, 8.0, 3.0, 24, 6, 256) if pressure else (300, 40.0, 4.0, 400, 10, 8)
    )
    cfg = FleetConfig(
        kv_event_delay=kv_event_delay,
        replicas=[ReplicaSpec("llama3-8b-h100", 3, {"num_gpu_blocks": blocks})],
        policy=policy,
        qps=qps,
        duration=duration,
        seed=seed,
        max_requests=count,
    )
    specs = workloads.shared_prefix_stream(
        num_groups=groups,
        system_prompt_len=512,
        question_len=32,
        output_len=output_len,
        count=count,
        seed=seed,
    )
    return FleetSim(cfg, specs)


def _assert_index_mirrors_the_engines(sim: FleetSim) -> None:
    """The precise scorer's block index holds exactly what each replica's engine has cached."""
    index = sim._kv_indexes[0]
    for ep, rep in zip(sim.endpoints, sim.replicas, strict=True):
        assert index.engine_hashes(ep.address) == set(rep.engine.pool.cached)


def test_precise_policy_is_deterministic_and_completes() -> None:
    keys = ("requests", "errors", "unfinished", "ttft_p50", "ttft_p99", "prefix_hit_rate")
    a, b = _sim("reference-precise", 7).run().row, _sim("reference-precise", 7).run().row
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["errors"] == 0 and a["unfinished"] == 0


def test_index_mirrors_every_engines_cache_after_the_run() -> None:
    sim = _sim("reference-precise", 3)
    assert len(sim._kv_indexes) == 1
    sim.run()
    assert all(rep.engine.pool.cached for rep in sim.replicas), "the workload must leave blocks cached"
    _assert_index_mirrors_the_engines(sim)


def test_a_new_run_starts_from_an_empty_index() -> None:
    first = _sim("reference-precise", 3)
    first.run()
    second = _sim("reference-precise", 4)
    assert all(second._kv_indexes[0].num_blocks(ep.address) == 0 for ep in second.endpoints)


def test_other_policies_get_no_event_feed() -> None:
    assert _sim("reference", 1)._kv_indexes == []


def test_precise_routing_keeps_groups_together(tmp_path) -> None:
    # Against round robin on the same seeded workload, the precise index must raise the hit rate.
    rr = _sim("round-robin", 5).run().row["prefix_hit_rate"]
    precise = _sim("reference-precise", 5).run().row["prefix_hit_rate"]
    assert precise > rr + 0.1


def test_speculative_credit_groups_requests_before_events_arrive() -> None:
    # Events that never arrive within the run: only dispatch-time credit can keep a group together.
    blind = _sim("reference-precise-events", 5, kv_event_delay=1e6).run().row["prefix_hit_rate"]
    spec = _sim("reference-precise", 5, kv_event_delay=1e6).run().row["prefix_hit_rate"]
    assert spec > blind + 0.1


def test_kvgate_precise_policy_completes_and_keeps_groups_together() -> None:
    sim = _sim("kvgate-precise", 5)
    assert len(sim._kv_indexes) == 1
    row = sim.run().row
    assert row["errors"] == 0 and row["unfinished"] == 0
    assert row["prefix_hit_rate"] > _sim("round-robin", 5).run().row["prefix_hit_rate"] + 0.1


def test_bypass_traffic_reaches_engines_and_events_but_not_the_picker() -> None:
    sim = _sim("reference-precise", 6)
    sim.cfg.bypass_fraction = 0.5
    res = sim.run()
    # About half went around the picker; the figures count only the picker's own requests.
    assert 0.35 < sim.bypassed / (sim.bypassed + sum(sim.per_replica)) < 0.65
    assert res.row["requests"] == sum(sim.per_replica) and res.row["bypassed"] == sim.bypassed
    assert res.row["unfinished"] == 0
    _assert_index_mirrors_the_engines(sim)  # the engines' events still reach it, bypass traffic included
    assert all(ep.inflight.requests == 0 for ep in sim.endpoints)  # no callbacks for bypass requests


@pytest.mark.timeout(600)  # (~14 s of CPU alone, all simulation: at load ~15 on 2 cores it passed 120 s)
def test_cli_writes_results(tmp_path) -> None:
    assert "reference-precise" in PRECISE_POLICIES
    assert main(["--quick", "--qps", "10", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "precise-fleet.md").read_text()
    assert "reference-precise" in text and "kv-pressure" in text and "evict-heavy" in text
    assert "kvgate-precise" in text and "reference-precise-events" in text


def test_evictions_reach_the_index_under_kv_pressure() -> None:
    sim = _sim("reference-precise", 2, pressure=True)
    sim.run()
    assert sum(rep.engine.pool.evictions for rep in sim.replicas) > 0, "the case must evict"
    _assert_index_mirrors_the_engines(sim)


def test_precise_variants_keep_their_own_parameters_whatever_the_approximate_entry_had() -> None:
    # The kvgate policy's approximate entry has parameters (tokenizer, engineLru): a plain line swap once
    # left them as a second ``parameters`` key that replaced mode / indexName / speculativeTTL.
    from kvgate.bench.precise import precise_policy_config

    ttl = {"reference-precise": "2s", "reference-precise-events": 0, "kvgate-precise": "2s"}
    assert set(PRECISE_POLICIES) == set(ttl)
    for name, want in ttl.items():
        plugins = precise_policy_config(name).plugins
        assert not [p for p in plugins if p.type == "prefix-cache-scorer"], name
        (precise,) = [p for p in plugins if p.type == "precise-prefix-cache-scorer"]
        assert precise.parameters == {"mode": "tokens", "indexName": "fleetsim", "speculativeTTL": want}, name
