"""``scripts/fc_confirm_goals_s31.py`` (issue #15, fc31): the pre-registered head-to-head decision on
synthetic runs (four arms in one JSON per cell). A key is eligible when goals 1 and 2 hold with it in
every cell at each TTL and its goal-3 count is at least the shipped arm's; the higher goal-3 count wins,
then the higher mean margin over the reference, then prefillAlonePick. Fails on 691110b3 (the script is
not there)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_confirm_goals_s31 as fcg

SHAPES = ("4x128", "2x16")


def _run(ratio: float, slo: float, critical: float = 1.0) -> dict:
    return {
        "quiet_p90_vs_calm": ratio,
        "slo_attainment": slo,
        "shed": 0,
        "shed_rate": 0.0,
        "bands": {"critical (10)": {"slo_attainment": critical}},
    }


def _write(root: Path, ttl: str, cell: str, arms: dict[str, dict], ref_slo: float = 0.70) -> None:
    runs = {f"{fcg.ARMS[name]}/flood": run for name, run in arms.items()}
    runs["reference/flood"] = _run(9.0, ref_slo)
    (root / f"ttl{ttl}_{cell}.json").write_text(json.dumps({"runs": runs}))


def _fill(root: Path, arms: dict[str, dict], seeds: list[int]) -> None:
    for ttl in fcg.TTLS:
        for shape in SHAPES:
            for s in seeds:
                _write(root, ttl, f"{shape}_s{s}", arms)


def test_the_higher_goal_3_count_wins_then_the_margin_then_prefill_alone(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    shipped = _run(1.4, 0.69)  # goal 3 missed everywhere
    _fill(tmp_path, {"shipped": shipped, "packCertainMisses": _run(1.3, 0.72),
                     "prefillAlonePick": _run(1.3, 0.71)}, [1])  # fmt: skip
    assert fcg.read(tmp_path, [1]) == "packCertainMisses"  # same goal-3 count, larger margin
    assert "winner packCertainMisses" in capsys.readouterr().out
    _fill(tmp_path, {"shipped": shipped, "packCertainMisses": _run(1.3, 0.71),
                     "prefillAlonePick": _run(1.3, 0.71)}, [1])  # fmt: skip
    assert fcg.read(tmp_path, [1]) == "prefillAlonePick"  # a full tie
    # prefillAlonePick's goal 3 lost in one cell: packCertainMisses has the higher count
    _write(tmp_path, "30", "2x16_s1", {"shipped": shipped, "packCertainMisses": _run(1.3, 0.71),
                                       "prefillAlonePick": _run(1.3, 0.69)})  # fmt: skip
    assert fcg.read(tmp_path, [1]) == "packCertainMisses"


def test_a_key_losing_goal_1_or_2_in_a_cell_or_below_shipped_on_goal_3_is_out(tmp_path: Path) -> None:
    good = _run(1.3, 0.72)
    _fill(tmp_path, {"shipped": _run(1.4, 0.69), "packCertainMisses": good, "prefillAlonePick": good}, [1])
    # goal 1 lost by prefillAlonePick in one cell at 1000, goal 2 by packCertainMisses in one at 30
    _write(tmp_path, "1000", "4x128_s1", {"shipped": _run(1.4, 0.69), "packCertainMisses": good,
                                          "prefillAlonePick": _run(1.51, 0.72)})  # fmt: skip
    _write(tmp_path, "30", "4x128_s1", {"shipped": _run(1.4, 0.69), "prefillAlonePick": good,
                                        "packCertainMisses": _run(1.3, 0.72, critical=0.98)})  # fmt: skip
    assert fcg.read(tmp_path, [1]) is None
    # both keys fine, but below the shipped arm's goal-3 count: no winner
    _fill(tmp_path, {"shipped": _run(1.4, 0.72), "packCertainMisses": _run(1.3, 0.69),
                     "prefillAlonePick": _run(1.3, 0.69)}, [1])  # fmt: skip
    assert fcg.read(tmp_path, [1]) is None


def test_a_cell_not_run_leaves_no_winner(tmp_path: Path) -> None:
    good = _run(1.3, 0.72)
    _fill(tmp_path, {"shipped": _run(1.4, 0.69), "packCertainMisses": good, "prefillAlonePick": good}, [1])
    assert fcg.read(tmp_path, [1]) == "prefillAlonePick"
    assert fcg.read(tmp_path, [1, 2]) is None
