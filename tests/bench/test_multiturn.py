"""The mixed multi-turn family (bench.mixed) and the knee-based capacity (bench.multiturn)."""

from __future__ import annotations

import itertools

import pytest

from kvgate.bench.mixed import BURST_SIZE, FAMILIES, TUNING_SET, VALIDATION_SET, mixed_workload
from kvgate.bench.multiturn import find_knee, main, run_once


def test_tuning_and_validation_sets_do_not_overlap() -> None:
    assert {f for f, _ in TUNING_SET}.isdisjoint({f for f, _ in VALIDATION_SET})
    assert {s for _, s in TUNING_SET}.isdisjoint({s for _, s in VALIDATION_SET})


def test_workload_is_time_ordered_deterministic_and_mixed() -> None:
    fam = FAMILIES["a"]
    specs = list(mixed_workload(fam, qps=8.0, horizon=60.0, seed=1))
    again = list(mixed_workload(fam, qps=8.0, horizon=60.0, seed=1))
    assert [s.prompt_ids for s in specs] == [s.prompt_ids for s in again]
    times = [s.at for s in specs]
    assert all(t is not None for t in times)
    assert times == sorted(times) and max(times) < 60.0  # type: ignore[type-var]
    assert 0.5 * 8 * 60 < len(specs) < 1.5 * 8 * 60
    # Sessions: every turn extends the previous turn's whole prompt (context grows).
    by_session: dict[str, list[list[int]]] = {}
    for s in specs:
        if s.session:
            by_session.setdefault(s.session, []).append(s.prompt_ids)
    multi = [turns for turns in by_session.values() if len(turns) > 1]
    assert multi
    for turns in multi:
        for prev, cur in itertools.pairwise(turns):
            assert len(cur) > len(prev) and cur[: len(prev)] == prev
    # Bursts: a tenant's requests come BURST_SIZE at a time, sharing the tenant prefix.
    tenants = [s for s in specs if s.group.startswith("t")]
    assert tenants and len(tenants) % BURST_SIZE == 0
    first = tenants[0]
    same = [s for s in tenants if s.group == first.group]
    assert all(s.prompt_ids[: fam.tenant_prefix] == first.prompt_ids[: fam.tenant_prefix] for s in same)
    # Decode-heavy one-offs: outputs longer than prompts.
    oneoffs = [s for s in specs if s.group == "oneoff"]
    assert oneoffs and all(s.max_tokens > len(s.prompt_ids) for s in oneoffs)


def test_find_knee_stops_at_the_first_load_past_twice_the_unloaded_p90() -> None:
    pts = [(1.0, 0.3), (2.0, 0.5), (3.0, 0.61), (4.0, 0.55), (5.0, 9.0)]
    assert find_knee(pts, unloaded_p90=0.3) == 2.0  # 3.0 is past 0.6; the lucky 4.0 does not count
    assert find_knee(pts, unloaded_p90=0.3, factor=3.0) == 4.0
    assert find_knee([(1.0, None)], unloaded_p90=0.3) == 0.0
    assert find_knee([(1.0, 1.0)], unloaded_p90=0.3) == 0.0


def test_run_once_drives_the_real_picker_on_the_tight_kv_fleet() -> None:
    row = run_once(FAMILIES["b"], "kvgate", 3.0, seed=7, duration=10.0, warmup=5.0)
    assert row["ok"] > 5 and row["errors"] == 0 and row["replicas"] == 4
    assert row["prefix_hit_rate"] is not None and row["prefix_hit_rate"] > 0.0
    assert row["session_turns"] > 0 and 0 <= row["session_moves"] <= row["session_turns"]
    assert row["session_hit"] is not None and row["oneoff_ttft_p90"] is not None


def test_cli_writes_json_and_markdown(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rc = main(["--set", "tuning", "--qps", "2", "--duration", "5", "--warmup", "2",
               "--policies", "kvgate,sglang-cache-aware", "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    md = (tmp_path / "fleet-multiturn.md").read_text()
    assert "tuning" in md and "sglang-cache-aware" in md and "session moves" in md
    assert (tmp_path / "fleet-multiturn.json").exists()


def test_workers_bench_runs_one_and_two_workers_on_the_same_workload(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kvgate.bench.workers_sim import main as workers_main
    from kvgate.bench.workers_sim import run_workers

    one = run_workers("b", 7, 3.0, 1, False, 8.0, 3.0)
    two = run_workers("b", 7, 3.0, 2, True, 8.0, 3.0)
    assert one["requests"] == two["requests"] > 5  # the same requests, whoever picks them
    assert two["workers"] == 2 and two["shared_inflight"] and two["errors"] == 0
    argv = ["--duration", "3", "--warmup", "1", "--capacities", "a=1,b=1,c=1", "--out", str(tmp_path)]
    assert workers_main(argv) == 0
    assert "per worker" in (tmp_path / "fleet-workers.md").read_text()


def test_workers_bench_bound_with_a_shared_waiting_list_and_faster_gossip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kvgate.bench.workers_sim import main as workers_main

    argv = ["--duration", "3", "--warmup", "1", "--capacities", "a=1,b=1,c=1", "--modes",
            "gossip-shared-wait", "--gossip-interval", "0.001", "--out", str(tmp_path)]  # fmt: skip
    assert workers_main(argv) == 0
    md = (tmp_path / "fleet-workers.md").read_text()
    assert "per worker + gossip every 1 ms, waiting list shared (bound)" in md


@pytest.mark.parametrize("interval", ["0", "-0.5", "nan", "inf", "-inf", "1e309"])
def test_workers_bench_rejects_a_gossip_interval_that_is_not_positive(interval, capsys) -> None:  # type: ignore[no-untyped-def]
    """0 or less rescheduled the gossip flush at the same virtual instant forever: the run hung; infinity
    never flushed: the run measured no gossip at all, under the gossip mode's name."""
    from kvgate.bench.workers_sim import main as workers_main
    from kvgate.bench.workers_sim import run_workers

    with pytest.raises(SystemExit) as e:
        workers_main(
            ["--modes", "gossip", "--duration", "1", "--warmup", "0", f"--gossip-interval={interval}"]
        )
    assert e.value.code == 2
    assert "--gossip-interval: must be > 0 seconds and finite" in capsys.readouterr().err
    with pytest.raises(ValueError, match="gossip_s must be > 0 and finite"):
        run_workers("b", 7, 3.0, 2, True, 1.0, 0.0, gossip=True, gossip_s=float(interval))
