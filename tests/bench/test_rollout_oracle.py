"""``scripts/rollout_oracle.py``: the forked futures are the runs they stand for (the simulator is
deterministic, and a fork continues the parent's run exactly), so the oracle's p90 is an achievable one
and never worse than its base policy's on the same run. Run in a fresh interpreter: the oracle forks,
and the test process may hold other tests' threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROG = """
import dataclasses, json
from rollout_oracle import oracle
from kvgate.bench.mixed import FAMILIES
from kvgate.bench.multiturn import run_once
fam = dataclasses.replace(FAMILIES["c"], turns=(2, 4))
plain = run_once(fam, "kvgate", 8.0, 7, 12.0, 4.0)["ttft_p90"]
row, decisions, _, futures = oracle(fam, 8.0, 7, "first", 0.0, "kvgate", 0.3, 1, 12.0, 4.0)
print(json.dumps([plain, row["ttft_p90"], decisions, futures]))
"""


def test_one_searched_pick_is_the_best_of_its_four_whole_runs() -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'scripts'}"}
    r = subprocess.run(
        [sys.executable, "-c", PROG], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert r.returncode == 0, r.stderr
    plain, p90, decisions, futures = json.loads(r.stdout.strip().splitlines()[-1])
    assert decisions == 1 and len(futures) == 4
    # BASE's own pick among the four futures reproduces the plain run: the forks are faithful.
    assert any(abs(f - plain) < 1e-12 for f in futures)
    assert p90 == min(futures) <= plain
