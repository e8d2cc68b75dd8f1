"""Review s28-rev-a28 N1 (fixa28): ``scripts/fc_live_ratio_interval.py --goal`` pairs the quiet requests
answered in both runs (the ``--timing`` trace holds answered ones only), so fc28's rule (an unanswered request
later than every answer) cannot enter its figure. It now says how many each run left unanswered (the bench's
``unfinished``), where there are any, beside the figure. The first case fails on main 974e848b (nothing said).
No process, no timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_live_ratio_interval as ri


def _doc(mix: str, ttft: float, unfinished: int) -> dict[str, Any]:
    trace = [["t1", 6.0 + i, ttft + 0.001 * i, 0, 0, "r"] for i in range(20)]
    return {"runs": {f"a/{mix}": {"trace": trace, "quiet": {"unfinished": unfinished}}}}


def _goal(tmp_path: Path, capsys: pytest.CaptureFixture[str], calm: int, flood: int) -> str:
    paths = []
    for mix, ttft, lost in (("calm", 0.02, calm), ("flood", 0.03, flood)):
        path = tmp_path / f"{mix}.json"
        path.write_text(json.dumps(_doc(mix, ttft, lost)))
        paths.append(str(path))
    ri.compare(paths, 200, 5.0, goal=True)
    return capsys.readouterr().out


def test_the_goal_line_names_unanswered_quiet_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _goal(tmp_path, capsys, 0, 3)
    assert "20 quiet requests matched" in out
    assert "(unanswered, not in the pairs: calm 0, flood 3)" in out, out


def test_none_unanswered_none_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "not in the pairs" not in _goal(tmp_path, capsys, 0, 0)
