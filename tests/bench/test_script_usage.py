"""``scripts/knee_checks.py``, ``cold_bursts.py``, ``burst_oracles.py``, ``cold_spread_trace.py``,
``rollout_oracle.py``, ``best_of_policies.py``, ``luck_band.py``, ``pick_divergence.py``,
``tie_reseed.py``, ``session_moves.py``, ``burst_survival.py`` and ``cold_work_homes.py`` take positional
arguments (as docs/benchmarks.md names them): ``-h`` / ``--help`` prints the usage (their docstring) and
exits 0, too few arguments print it to stderr and exit 2, not a traceback (review s11-docs L11;
``session_moves.py``: review s14-docs I3)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USAGE = {
    "knee_checks.py": "knee_checks.py CHECK POLICY [FIRST_SEED LAST_SEED [QPS]]",
    "cold_bursts.py": "cold_bursts.py FAMILY QPS [SEED] [POLICY]",
    "burst_oracles.py": "burst_oracles.py MODE FAMILY QPS SEED",
    "cold_spread_trace.py": "cold_spread_trace.py FAMILY QPS SEED POLICY [BIN_S]",
    "rollout_oracle.py": "rollout_oracle.py FAMILY QPS SEED [DECIDE [HORIZON [BASE [TARGET]]]]",
    "best_of_policies.py": "best_of_policies.py FAMILY QPS FIRST_SEED LAST_SEED POLICY...",
    "luck_band.py": "luck_band.py FAMILY QPS FIRST_SEED LAST_SEED N POLICY...",
    "pick_divergence.py": "pick_divergence.py FAMILY QPS SEED N POLICY...",
    "tie_reseed.py": "tie_reseed.py FAMILY QPS FIRST_SEED LAST_SEED N POLICY...",
    "session_moves.py": "session_moves.py FAMILY QPS [SEED] [POLICY]",  # review s14-docs I3
    "burst_survival.py": "burst_survival.py FAMILY QPS FIRST_SEED LAST_SEED POLICY...",
    "cold_work_homes.py": "cold_work_homes.py FAMILY QPS FIRST_SEED LAST_SEED POLICY...",
}


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("script", sorted(USAGE))
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_the_usage(script: str, flag: str) -> None:
    r = _run(script, flag)
    assert r.returncode == 0, r.stderr
    assert USAGE[script] in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("script", sorted(USAGE))
def test_too_few_arguments_print_the_usage(script: str) -> None:
    r = _run(script, "c")
    assert r.returncode == 2, r.stderr
    assert USAGE[script] in r.stderr and "Traceback" not in r.stderr


def test_unknown_luck_move_prints_the_usage() -> None:
    # review s14-mt N1: before, LUCK_MOVE was checked only inside the first replay (a traceback).
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LUCK_MOVE": "sideways"}
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "luck_band.py"), "c", "6.992", "105", "105", "1", "kvgate"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "LUCK_MOVE='sideways': one of after, picker" in r.stderr
    assert USAGE["luck_band.py"] in r.stderr and "Traceback" not in r.stderr
