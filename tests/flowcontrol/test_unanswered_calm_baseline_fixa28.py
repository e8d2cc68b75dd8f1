"""Review s28-rev-a28 F1 / F2 (fixa28): fc28's rule makes a quiet p90 ``inf`` when it falls among unanswered
requests. The simulated bench's main() gave no flood / calm ratio over an ``inf`` calm p90, but the live bench
(``flowcontrol_live._main``) and the frontier (``flowcontrol_frontier._setting_row``) computed ``f / inf ==
0.0`` (goal 1 "met" by the widest margin exactly when the calm run left its quiet requests unanswered), and
the bench's over-goal breakdown (and ``scripts/slo_miss_trace.py --floor``) drew its line at ``1.5 x inf``
(0 % of the quiet requests over it; the script's JSON got ``Infinity``). All now read the calm p90 through
``flowcontrol_bench.baseline`` / ``p90_ratio``. The four cases fail on main 5d667046. No process, no timing:
the fleets are replaced by canned outcomes."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

from kvgate.bench import flowcontrol_bench as fb
from kvgate.bench import flowcontrol_frontier as ff
from kvgate.bench import flowcontrol_live as fl

ROOT = Path(fb.__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))

import slo_miss_trace as smt  # noqa: E402


def _outcomes(answered: int, unanswered: int, ttft: float) -> list[fb.Outcome]:
    outs = [fb.Outcome(q, 10.0 + i, ttft=ttft, sent=10.0 + i, scheduled=10.0 + i) for q in fb.QUIET
            for i in range(answered)]  # fmt: skip
    outs += [fb.Outcome(q, 10.0 + i) for q in fb.QUIET for i in range(unanswered)]  # never answered
    return outs


def test_the_ratio_has_no_baseline_at_infinity() -> None:
    assert fb.p90_ratio(0.3, math.inf) is None
    assert fb.p90_ratio(math.inf, 0.1) == math.inf  # (the flood's p90 unanswered: over the goal, not met)
    assert fb.p90_ratio(0.3, 0.1) == 0.3 / 0.1
    assert fb.p90_ratio(0.3, None) is None and fb.p90_ratio(None, 0.1) is None


def test_frontier_ratio_over_an_unanswered_calm_p90_is_none() -> None:
    flood = fb.Run("kvgate", _outcomes(10, 0, 0.3))
    calm = fb.Run("kvgate", _outcomes(8, 2, 0.02))
    calm_p90 = fb.summarize(calm, 0.0)["quiet"]["p90_ttft_s"]
    assert calm_p90 == math.inf  # fc28's rule
    row = ff._setting_row(fb.summarize(flood, 0.0), "ttl", 1000.0, True, calm_p90)
    assert row["quiet_p90_vs_calm"] is None, row["quiet_p90_vs_calm"]  # main 5d667046: 0.0


def test_live_ratio_over_an_unanswered_calm_p90_is_none(monkeypatch: Any) -> None:
    base = 2.0
    n_calm = len(fb.Mix(base, "calm", 20.0).arrivals(random.Random(1)))

    async def run_arm(arm: str, arrivals: Any, spec: Any, duration: float, ttl: float, *rest: Any) -> Any:
        calm = len(arrivals) == n_calm
        outs = _outcomes(8, 2, 0.02) if calm else _outcomes(10, 0, 0.3)
        return fb.Run(arm, outs, duration=duration), {"errors": 0}

    monkeypatch.setattr(fl, "run_arm", run_arm)
    args = argparse.Namespace(
        duration=20.0, base_rate=base, replicas=2, profile="tiny", time_scale=0.5, max_num_seqs=16, workers=1,
        load=0.9, mixes="calm,flood", arms="kvgate", seed=1, ttl=30.0, headroom=0.25,
        headroom_on="saturation", ttft_target=0.0, slo_first=False, running_reserve=False,
        free_slot_pick=False, ttft_confidence=None, timing=False, warmup=0.0,
    )  # fmt: skip
    rows = asyncio.run(fl._main(args))
    assert rows["runs"]["kvgate/calm"]["quiet"]["p90_ttft_s"] == math.inf
    ratio = rows["runs"]["kvgate/flood"]["quiet_p90_vs_calm"]
    assert ratio is None, ratio  # main 5d667046: 0.0 (0.3 / inf), goal 1 "met"


class _Canned:
    def __init__(self, arm: str) -> None:
        self.arm = arm

    def simulate(self, arrivals: list[fb.Arrival], horizon: float) -> fb.Run:
        flood = sum(1 for a in arrivals if a.tenant == fb.FLOOD)
        quiet = sum(1 for a in arrivals if a.tenant == fb.QUIET[0])
        outs = _outcomes(10, 0, 0.3) if flood > 3 * quiet else _outcomes(8, 2, 0.02)
        return fb.Run(self.arm, outs, duration=horizon)


def test_the_over_goal_breakdown_has_no_line_at_infinity(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(fb, "sim_from_args", lambda args, arm, seed, *rest: _Canned(arm))
    argv = ["--arms", "kvgate", "--quick", "--replicas", "2", "--max-num-seqs", "16", "--out", str(tmp_path)]
    assert fb.main(argv) == 0
    rows = json.loads((tmp_path / "flowcontrol.json").read_text())
    assert rows["runs"]["kvgate/calm"]["quiet"]["p90_ttft_s"] is None  # (inf, written as null)
    assert rows["runs"]["kvgate/flood"]["quiet_p90_vs_calm"] is None  # goal 1: no ratio, not met
    # main 5d667046: {"line_s": null (inf), "over_share": 0.0, ...}: "no quiet request over the goal's line"
    assert "quiet_over_goal" not in rows["runs"]["kvgate/flood"]


def test_the_floor_trace_draws_no_line_at_infinity(monkeypatch: Any, tmp_path: Path) -> None:
    monkeypatch.setattr(smt, "calm_p90", lambda arm, args, base: math.inf)
    out = tmp_path / "floor.json"
    argv = ["--replicas", "2", "--max-num-seqs", "16", "--duration", "10", "--warmup", "2", "--floor",
            "--arms", "reference", "--out", str(out)]  # fmt: skip
    assert smt.main(argv) == 0
    doc = json.loads(out.read_text(), parse_constant=_not_json)  # main 5d667046: "line_s": Infinity
    assert "floors" not in doc


def _not_json(constant: str) -> None:
    raise AssertionError(f"the JSON holds {constant}, which JSON has not")
