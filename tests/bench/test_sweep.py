"""A whole fleet scenario end to end at toy size: probe, sweep, JSON + markdown + PNGs."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvgate.bench import workloads
from kvgate.bench.fleetsim import ReplicaSpec
from kvgate.bench.scenarios import SCENARIOS, Scenario
from kvgate.bench.sweep import run_scenario


def _toy() -> Scenario:
    return Scenario(
        name="toy",
        title="toy",
        replicas=[ReplicaSpec("llama3-8b-h100", 3, {"num_gpu_blocks": 300})],
        workload=lambda seed, n: workloads.shared_prefix_stream(
            num_groups=6, system_prompt_len=768, question_len=32, output_len=8, count=n, seed=seed
        ),
        load_fractions=[0.3, 0.6],
        duration=4.0,
        warmup=2.0,
        how_scaled="toy",
        policies=["round-robin", "kvgate"],
        probe_policies=["kvgate"],
        probe_qps=400.0,
        quick_fractions=[0.5],
        quick_duration=3.0,
    )


def test_run_scenario_writes_results(tmp_path: Path) -> None:
    payload = run_scenario(_toy(), quick=False, seed=0, out=tmp_path)
    assert payload["capacity_req_per_s"] > 10
    rows = payload["rows"]
    assert [(r["policy"], r["load_fraction"]) for r in rows] == [
        ("round-robin", 0.3),
        ("kvgate", 0.3),
        ("round-robin", 0.6),
        ("kvgate", 0.6),
    ]
    assert all(r["errors"] == 0 and r["ok"] > 0 for r in rows)
    saved = orjson.loads((tmp_path / "fleet-toy.json").read_bytes())
    assert saved["rows"] == orjson.loads(orjson.dumps(rows))
    md = (tmp_path / "fleet-toy.md").read_text()
    assert md.count("| kvgate |") == 2
    for png in ("fleet-toy-ttft.png", "fleet-toy-load.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_named_scenarios_are_well_formed() -> None:
    for sc in SCENARIOS.values():
        assert sc.load_fractions == sorted(sc.load_fractions)
        assert sc.key_fraction in sc.load_fractions or sc.name == "multi-lora"
        spec = next(iter(sc.workload(0, 3)))
        assert spec.max_tokens > 0 and spec.prompt_ids


@pytest.mark.slow  # ~8 extra fleet runs (about 50 s on a loaded 2-core machine)
def test_knee_capacity_is_at_most_the_ladder_top_and_recorded(tmp_path: Path) -> None:
    payload = run_scenario(_toy(), quick=True, seed=0, out=tmp_path, capacity="knee")
    assert payload["capacity_mode"] == "knee"
    knee = payload["knee"]
    assert knee["unloaded_p90_s"] > 0 and set(knee["knee_req_per_s"]) == {"kvgate"}
    assert 0 < payload["capacity_req_per_s"] <= 1.1 * 400
    assert (tmp_path / "fleet-toy-quick-knee.json").exists()


def test_seeds_run_every_point_per_seed_and_summarise_against_sglang(tmp_path: Path) -> None:
    sc = _toy()
    sc.policies = ["round-robin", "sglang-cache-aware"]
    payload = run_scenario(sc, quick=True, seed=5, seeds=[5, 6], out=tmp_path)
    rows = payload["rows"]
    assert [(r["seed"], r["policy"]) for r in rows] == [
        (5, "round-robin"), (5, "sglang-cache-aware"), (6, "round-robin"), (6, "sglang-cache-aware"),
    ]  # fmt: skip
    assert payload["seeds"] == [5, 6]
    by = {(s["policy"]): s for s in payload["summary"]}
    assert by["sglang-cache-aware"]["ttft_p90_vs_sglang-cache-aware"] == pytest.approx(1.0)
    rr = [r["ttft_p90"] / b["ttft_p90"] for r, b in zip(rows[0::2], rows[1::2], strict=True)]
    assert by["round-robin"]["ttft_p90_vs_sglang-cache-aware"] == pytest.approx((rr[0] * rr[1]) ** 0.5)
    assert by["round-robin"]["seeds"] == 2
    md = (tmp_path / "fleet-toy-quick-seeds5-6.md").read_text()
    assert "Over seeds 5, 6" in md and "| 0.50 | round-robin | 2 |" in md
    assert not (tmp_path / "fleet-toy-quick.md").exists()  # the single-seed file is not overwritten


def test_rag_scenario_is_a_mixed_fleet_whose_kv_holds_a_fraction_of_the_corpus() -> None:
    from kvgate.sim.profiles import get_profile

    sc = SCENARIOS["rag"]
    assert len({r.profile for r in sc.replicas}) == 2
    kv_tokens = 0
    for r in sc.replicas:
        kv_tokens += r.count * 16 * r.overrides.get("num_gpu_blocks", get_profile(r.profile).num_gpu_blocks)
    assert 300_000 < kv_tokens < 400_000  # vs ~1.2M tokens of documents
    assert sc.quick_fractions == [0.5, 0.8]


def test_seed_lists_on_the_command_line() -> None:
    import argparse

    from kvgate.bench.cli import _seed_list

    assert _seed_list("0-3") == [0, 1, 2, 3]
    assert _seed_list("4,9") == [4, 9]
    for bad in ("3-1", "x", "1-", "1,1", "2,3,2"):  # a seed twice would run twice and be summarised once
        with pytest.raises(argparse.ArgumentTypeError):
            _seed_list(bad)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["rag", "--seed", "3", "--seeds", "0-3"], "--seed and --seeds are exclusive"),
        (["live", "--seeds", "0-3"], "--seeds is for fleet scenarios, not 'live'"),
        (["inference-perf", "--seeds", "0,1"], "--seeds is for fleet scenarios, not 'inference-perf'"),
        (["rag", "--seeds", "1,1"], "a seed is listed twice"),
    ],
)
def test_seeds_where_they_would_be_ignored_or_doubled_is_an_error(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import kvgate.bench.inference_perf as inference_perf
    from kvgate.bench import live, sweep
    from kvgate.bench.cli import main

    def ran(*_a: object, **_k: object) -> int:  # a regression fails at once instead of running the bench
        raise AssertionError(f"ran {argv}")

    for mod, name in ((sweep, "run_scenario"), (live, "main_from_args"), (inference_perf, "run")):
        monkeypatch.setattr(mod, name, ran)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and says in capsys.readouterr().err


def test_with_seeds_capacity_is_probed_on_the_first_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvgate.bench.cli import main
    from kvgate.bench.sweep import probe_capacity

    sc = _toy()
    monkeypatch.setitem(SCENARIOS, "toy", sc)
    # The toy fleet serves a different rate on seeds 5 and 6 under the probe's overload.
    on = {s: probe_capacity(sc, "kvgate", s, sc.quick_duration) for s in (5, 6)}
    assert on[5] != on[6]
    argv = ["toy", "--quick", "--seeds", "6,5", "--policies", "round-robin", "--out", str(tmp_path)]
    assert main(argv) == 0
    payload = orjson.loads((tmp_path / "fleet-toy-quick-seeds6_5.json").read_bytes())
    assert payload["seed"] == 6 and payload["seeds"] == [6, 5]
    assert payload["capacity_req_per_s"] == pytest.approx(on[6])
    assert "seed 6)" in (tmp_path / "fleet-toy-quick-seeds6_5.md").read_text()
