"""``scripts/gateway_path_cost.py --picks``: its measurement runs, and it fails when the trees pick apart."""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gateway_path_cost.py"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("gateway_path_cost", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCRIPT.parent))  # (it imports its sibling tree_runs.py, as when run as a script)
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return mod


def test_measure_picks_reports_both_figures_and_a_stable_digest() -> None:
    mod = _script()
    threshold = gc.get_threshold()
    try:
        a = mod._measure_picks(50, 2, "kvgate", 300)
        b = mod._measure_picks(50, 2, "kvgate", 300)
    finally:  # (it tunes the collector as kvgate serve does: not for the rest of the test session)
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert a["bench"] > 0 and a["trace"] > 0 and len(a["rounds"]) == 2
    assert a["digest"] == b["digest"]  # the trace decides alike in every run of the same code


@pytest.mark.parametrize(("digests", "rc"), [(("d1", "d1"), 0), (("d1", "d2"), 1)])
def test_picks_mode_fails_when_the_trees_pick_apart(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], digests: tuple[str, str], rc: int
) -> None:
    mod = _script()
    this = mod.HERE_SRC

    def run(src: Path, args: argparse.Namespace) -> dict[str, Any]:
        digest = digests[1] if src == this else digests[0]
        return {"bench": 1.0, "trace": 2.0, "hash": 0.5, "digest": digest, "rounds": [1.0]}

    monkeypatch.setattr(mod, "_run", run)
    args = argparse.Namespace(base_src=Path("/nonexistent/src"), repeats=2, policy="kvgate")
    assert mod._main_picks(args) == rc
    out = capsys.readouterr().out
    assert ("PICKS DIFFER" in out) == (rc == 1)


def test_parts_reports_every_variant() -> None:
    mod = _script()
    threshold = gc.get_threshold()
    try:
        best = mod._parts(30, 1)
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert list(best) == [
        "all",
        "no cost scorer",
        "no prefix producer",
        "no observers",
        "no accounting",
        "round-robin policy",
    ]
    assert all(0 < us < float("inf") for us in best.values())


def test_stages_mode_charges_every_stage_and_counts_one_requests_calls() -> None:
    """``--stages`` (run as the script runs it: in its own process, its wrappers never in this one): every
    stage of the tree is wrapped and charged, and a request's calls are counted (no task a request)."""
    import json
    import os
    import subprocess

    src = SCRIPT.parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{SCRIPT.parent}"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--_stages", "200", "2", "kvgate"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    stages = {k: v for k, v in got["stages"].items() if "#" not in k}
    assert stages["pick"] > 0 and stages["front: read, parse head"] > 0 and got["total"] > 0
    # (a whole reply: on_dispatched and on_whole)
    assert got["stages"]["pick#calls"] == 1 and got["stages"]["accounting#calls"] == 2
    assert got["counts"]["tasks"] == 0 and got["counts"]["python calls"] > 50 and got["missing"] == []
