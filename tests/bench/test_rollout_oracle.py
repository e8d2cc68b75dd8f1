"""``scripts/rollout_oracle.py``: the forked futures are the runs they stand for (the simulator is
deterministic, and a fork continues the parent's run exactly), so the oracle's p90 is an achievable one
and never worse than its base policy's on the same run."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from rollout_oracle import oracle

from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import run_once


def test_one_searched_pick_is_the_best_of_its_four_whole_runs() -> None:
    fam = dataclasses.replace(FAMILIES["c"], turns=(2, 4))
    plain = run_once(fam, "kvgate", 8.0, 7, 12.0, 4.0)["ttft_p90"]
    row, decisions, _, futures = oracle(fam, 8.0, 7, "first", 0.0, "kvgate", 0.3, 1, 12.0, 4.0)
    assert decisions == 1 and len(futures) == 4
    # BASE's own pick among the four futures reproduces the plain run: the forks are faithful.
    assert any(abs(f - plain) < 1e-12 for f in futures)
    assert row["ttft_p90"] == min(futures) <= plain
