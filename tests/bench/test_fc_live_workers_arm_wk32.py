"""``scripts/fc_live_workers_seeds.sh``'s arm (wk32): the runner had ``--arms kvgate-reserve-feasible``
written in, so the goal configuration since session 31 (``kvgate-reserve-feasible+alone``, with
``flowControl.prefillAlonePick``) could not run under ``--workers 2`` with it. ``ARM`` names the arm (one a
run), meta.json records it; unset, the arm of sessions 24-29 as before. The first test fails on main 2b9dcdff
(the arm written in, no "arm" in meta.json). Driven with a stand-in ``kvgate`` (as
``test_fc_live_workers_cutoff_wk29``) and a lock in tmp_path; the cut-off is the relative "+1 hour", far from
any run's few seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[2] / "scripts" / "fc_live_workers_seeds.sh"
FAKE_KVGATE = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
out=
while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
echo '{"fake": true}' > "$out/flowcontrol-live.json"
"""

pytestmark = pytest.mark.skipif(
    shutil.which("flock") is None, reason="the runner holds its lock with flock(1)"
)


def _run(tmp_path: Path, **env_extra: str) -> tuple[Path, list[str]]:
    fake = tmp_path / "kvgate"
    fake.write_text(FAKE_KVGATE)
    fake.chmod(0o755)
    (tmp_path / "src").mkdir()
    out, calls = tmp_path / "out", tmp_path / "calls"
    env = {k: v for k, v in os.environ.items() if k != "ARM"}  # (unset unless the test names it)
    env.update(KVGATE=str(fake), LOCK=str(tmp_path / "lock"), CALLS=str(calls), LOAD_EVERY="600", WORKERS="2",
               **env_extra)  # fmt: skip
    cmd = ["bash", str(RUNNER), str(tmp_path / "src"), str(out), "+1 hour", "87"]
    subprocess.run(cmd, env=env, check=True, timeout=120)
    return out, calls.read_text().splitlines() if calls.exists() else []


def _arms(call: str) -> str:
    words = call.split()
    return words[words.index("--arms") + 1]


def test_arm_names_the_arm_each_run_measures(tmp_path: Path) -> None:
    out, calls = _run(tmp_path, ARM="kvgate-reserve-feasible+alone")
    assert len(calls) == 2, calls
    assert [_arms(c) for c in calls] == ["kvgate-reserve-feasible+alone"] * 2
    for mix in ("calm", "flood"):
        meta = json.loads((out / f"seed-87-{mix}-w2" / "meta.json").read_text())
        assert meta["arm"] == "kvgate-reserve-feasible+alone" and meta["rc"] == 0


def test_unset_it_is_the_arm_of_sessions_24_to_29(tmp_path: Path) -> None:
    out, calls = _run(tmp_path)
    assert [_arms(c) for c in calls] == ["kvgate-reserve-feasible"] * 2
    meta = json.loads((out / "seed-87-flood-w2" / "meta.json").read_text())
    assert meta["arm"] == "kvgate-reserve-feasible"
