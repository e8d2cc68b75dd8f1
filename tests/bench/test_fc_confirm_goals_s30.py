"""``scripts/fc_confirm_goals_s30.py`` (issue #15, fc30): the pre-registered decision on synthetic runs.
The key is confirmed when, at each TTL, goals 1 and 2 hold in every cell with it and its goal-3 count
is at least the shipped arm's. Fails on 6d96a979 (the script is not there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_confirm_goals_s30 as fcg


def _run(ratio: float, slo: float, critical: float = 1.0) -> dict:
    return {
        "quiet_p90_vs_calm": ratio,
        "slo_attainment": slo,
        "shed": 0,
        "shed_rate": 0.0,
        "bands": {"critical (10)": {"slo_attainment": critical}},
    }


def _write(root: Path, variant: str, ttl: str, cell: str, arm: dict, ref_slo: float = 0.70) -> None:
    d = root / variant
    d.mkdir(parents=True, exist_ok=True)
    runs = {f"{fcg.ARM}/flood": arm, "reference/flood": _run(9.0, ref_slo)}
    (d / f"ttl{ttl}_{cell}.json").write_text(json.dumps({"runs": runs}))


def _fill(root: Path, variant: str, arm: dict, seeds: list[int]) -> None:
    for ttl in ("1000", "30"):
        for shape in ("4x128", "2x16"):
            for s in seeds:
                _write(root, variant, ttl, f"{shape}_s{s}", arm)


def test_confirmed_only_with_goals_1_2_everywhere_and_goal_3_no_fewer(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _fill(tmp_path, "base", _run(1.4, 0.69), [1])  # shipped: goal 3 missed everywhere
    _fill(tmp_path, "alone", _run(1.3, 0.72), [1])
    assert fcg.read(tmp_path, [1], "alone")
    assert "prefillAlonePick CONFIRMED" in capsys.readouterr().out
    # one cell over 1.5x calm at 30 s: not confirmed
    _write(tmp_path, "alone", "30", "2x16_s1", _run(1.51, 0.72))
    assert not fcg.read(tmp_path, [1], "alone")
    # goal 3 below the shipped arm's count: not confirmed
    _fill(tmp_path, "pack", _run(1.3, 0.69), [1])
    _fill(tmp_path, "base", _run(1.4, 0.71), [1])
    assert not fcg.read(tmp_path, [1], "pack")
    # a cell not run: not confirmed
    assert not fcg.read(tmp_path, [1, 2], "pack")
