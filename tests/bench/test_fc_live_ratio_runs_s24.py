"""``scripts/fc_live_ratio_interval.py``: the interval over several seeds holds the spread from one run to
the next (review s23-rev-flow23 F5): resampling only the requests within each seed's runs keeps the runs
fixed, so two seeds whose runs disagree give an interval as narrow as if they agreed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_live_ratio_interval as ri


def _pairs(calm: float, flood: float, n: int = 40) -> list[tuple[float, float]]:
    return [(calm, flood)] * n


def test_two_seeds_that_disagree_give_an_interval_over_both_runs() -> None:
    """Seed A's runs say 1.2x, seed B's 1.8x, each exactly (no spread within a run). Within the runs every
    draw is their geometric mean; over runs a draw takes A twice, B twice or one of each, so the interval
    reaches each seed's own ratio (FAILS on main a6977267: ``_draws`` has no level over runs)."""
    seeds = [_pairs(0.01, 0.012), _pairs(0.01, 0.018)]
    within = ri._draws(seeds, 400)
    assert within[0] == pytest.approx(within[-1]) == pytest.approx((1.2 * 1.8) ** 0.5)
    over = ri._draws(seeds, 400, runs=True)
    assert over[int(0.05 * 400)] == pytest.approx(1.2) and over[int(0.95 * 400)] == pytest.approx(1.8)
    mid = sum(1 for d in over if d == pytest.approx((1.2 * 1.8) ** 0.5)) / 400
    assert 0.4 < mid < 0.6  # (one of each: half the draws)


def test_goal_prints_both_intervals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--goal`` over two seeds prints the within-run interval and the one over runs."""
    paths = []
    for seed, flood in ((1, 0.012), (2, 0.018)):
        for mix, ttft in (("calm", 0.01), ("flood", flood)):
            rows = [[f"t{i % 2}", 5.0 + 0.3 * i, ttft, 0, 0, "r"] for i in range(40)]
            p = tmp_path / f"{mix}-{seed}.json"
            p.write_text(json.dumps({"runs": {f"a/{mix}": {"trace": rows}}}))
            paths.append(str(p))
    ri.compare(paths, 400, 5.0, goal=True)
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("geometric mean over 2 seeds: 1.470, 90% interval 1.470-1.470")
    assert "over runs too" in out[3] and "90% interval 1.200-1.800" in out[3], out
