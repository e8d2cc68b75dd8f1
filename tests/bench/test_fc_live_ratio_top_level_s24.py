"""``scripts/fc_live_ratio_interval.py``: the interval over runs, top level only (review s24-rev-wk24 F3).
The pre-registered two-level bootstrap (``_draws(runs=True)``: seeds drawn, then each drawn seed's pairs
resampled) counts the within-run spread twice: a seed's ratio already carries its sampling noise. With no
run-to-run spread at all (every seed's pairs from one distribution) its 90% interval is ~1.3-1.4x the true
spread of the geometric mean; the standard bootstrap for two-level data resamples the top level only
(Davison & Hinkley 1997 sec. 3.8; Field & Welsh, JRSS B 69 (2007)), and is printed beside it."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_live_ratio_interval as ri


def test_top_level_interval_is_not_wider_than_the_true_spread_without_run_to_run_spread() -> None:
    """The review's width test, on the top-level interval (FAILS on main a6977267 and f29693d1: no
    ``_draws_top``; their only interval over runs, ``_draws(runs=True)``, is 1.31x here)."""
    rnd = random.Random(7)

    def seed_pairs(m: int = 200) -> list[tuple[float, float]]:
        calm, flood = math.log(0.03), math.log(0.042)
        return [(rnd.lognormvariate(calm, 0.5), rnd.lognormvariate(flood, 0.6)) for _ in range(m)]

    def gm(seeds: list[list[tuple[float, float]]]) -> float:
        logs = (math.log(ri.p90([p[1] for p in s]) / ri.p90([p[0] for p in s])) for s in seeds)
        return math.exp(sum(logs) / len(seeds))

    k = 5
    truth = sorted(gm([seed_pairs() for _ in range(k)]) for _ in range(400))
    true_width = truth[int(0.95 * 400)] - truth[int(0.05 * 400)]
    widths = []
    for _ in range(20):  # (each interval from k = 5 seeds: its width varies with the seeds drawn)
        got = ri._draws_top([seed_pairs() for _ in range(k)], 1000)
        widths.append(got[950] - got[50])
    ratio = sum(widths) / len(widths) / true_width
    assert 0.6 < ratio < 1.15, f"top-level 90% width {ratio:.2f}x the true spread"  # (0.81x: sqrt((k-1)/k))


def test_top_level_draws_take_each_seed_as_measured() -> None:
    """Two seeds whose runs say 1.2x and 1.8x (each with spread inside): every draw is one of the three
    geometric means of two seeds drawn with replacement, each seed's ratio as measured (not resampled)."""
    rnd = random.Random(3)

    def seed(r: float) -> list[tuple[float, float]]:
        return [(x, r * x) for x in (rnd.uniform(0.01, 0.03) for _ in range(40))]

    got = ri._draws_top([seed(1.2), seed(1.8)], 400)
    assert {round(d, 9) for d in got} == {1.2, round(math.sqrt(1.2 * 1.8), 9), 1.8}
    assert 0.4 < sum(1 for d in got if d == pytest.approx(math.sqrt(1.2 * 1.8))) / 400 < 0.6


def test_goal_prints_the_top_level_line_after_the_pre_registered_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pre-registered line is printed as before (session 24's rule for seeds 67-71 reads it), the
    top-level one after it, labelled."""
    paths = []
    for s, flood in ((1, 0.012), (2, 0.018)):
        for mix, ttft in (("calm", 0.01), ("flood", flood)):
            rows = [[f"t{i % 2}", 5.0 + 0.3 * i, ttft, 0, 0, "r"] for i in range(40)]
            p = tmp_path / f"{mix}-{s}.json"
            p.write_text(json.dumps({"runs": {f"a/{mix}": {"trace": rows}}}))
            paths.append(str(p))
    ri.compare(paths, 400, 5.0, goal=True)
    out = capsys.readouterr().out.splitlines()
    assert out[3].startswith("  over runs too (seeds drawn with replacement, then their pairs): 90% interval")
    assert out[4].startswith("  over runs, top level only (seeds drawn with replacement, each its ratio as")
    assert "90% interval 1.200-1.800" in out[4], out
