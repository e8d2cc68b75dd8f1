"""``scripts/fc_live_workers_seeds.sh`` and ``scripts/fc_live_workers_table.py`` (wk27): the `--workers`
goal's runner loop, in the repo since session 27 (session 26's ran from a script outside it), and its
table. Both fail on main 6782b99d (neither script exists). The runner is driven with a stand-in for
``kvgate`` (it records its arguments and writes a bench JSON), a lock file in tmp_path and cut-offs that
no clock reading can cross ("24:00": every hold begins before it; "00:00": none does)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "scripts" / "fc_live_workers_seeds.sh"
S26 = ROOT / "docs" / "benchmarks" / "flowcontrol-live-workers-s26.json"

sys.path.insert(0, str(ROOT / "scripts"))

import fc_live_workers_table as table  # noqa: E402

needs_flock = pytest.mark.skipif(
    shutil.which("flock") is None, reason="the runner holds its lock with flock(1)"
)

FAKE_KVGATE = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
out=
while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
echo '{"fake": true}' > "$out/flowcontrol-live.json"
"""


def _run(tmp_path: Path, cutoff: str, *seeds: str) -> tuple[Path, list[str]]:
    fake = tmp_path / "kvgate"
    fake.write_text(FAKE_KVGATE)
    fake.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    calls = tmp_path / "calls"
    env = dict(os.environ, KVGATE=str(fake), LOCK=str(tmp_path / "lock"), CALLS=str(calls))
    subprocess.run(
        ["bash", str(RUNNER), str(src), str(out), cutoff, *seeds], env=env, check=True, timeout=120
    )
    return out, calls.read_text().splitlines() if calls.exists() else []


def _opt(call: str, name: str) -> str:
    return call.split(f"--{name} ")[1].split()[0]


@needs_flock
def test_the_runner_makes_each_seeds_four_runs_in_the_declared_order(tmp_path: Path) -> None:
    out, calls = _run(tmp_path, "24:00", "75", "76")
    order = [(_opt(c, "seed"), _opt(c, "mixes"), _opt(c, "workers")) for c in calls]
    assert order == [
        ("75", "calm", "2"), ("75", "flood", "2"), ("75", "calm", "1"), ("75", "flood", "1"),
        ("76", "calm", "2"), ("76", "flood", "2"), ("76", "calm", "1"), ("76", "flood", "1"),
    ]  # fmt: skip
    for c, (seed, mix, workers) in zip(calls, order, strict=True):  # session 24's command, unchanged
        assert "bench flowcontrol --live --replicas 2 --max-num-seqs 16 --load 0.9 --duration 80" in c
        assert "--arms kvgate-reserve-feasible --headroom 0.75 --headroom-on pending --ttft-target 0.05" in c
        assert c.endswith(f"--timing --out {out}/seed-{seed}-{mix}-w{workers}")
    meta = json.loads((out / "seed-76-flood-w1" / "meta.json").read_text())
    assert meta["seed"] == 76 and meta["mix"] == "flood" and meta["workers"] == 1 and meta["rc"] == 0
    assert len(meta["loadavg_start"].split()) == 5 and len(meta["loadavg_end"].split()) == 5  # /proc/loadavg
    assert "load average" in meta["uptime_start"]
    assert (out / "seed-76-flood-w1" / "flowcontrol-live.json").exists()


@needs_flock
def test_a_hold_that_begins_at_the_cut_off_starts_no_run_and_says_so(tmp_path: Path) -> None:
    out, calls = _run(tmp_path, "00:00", "75")
    assert calls == []
    for d in ("seed-75-calm-w2", "seed-75-flood-w2", "seed-75-calm-w1", "seed-75-flood-w1"):
        meta = json.loads((out / d / "meta.json").read_text())
        assert "cut-off 00:00" in meta["not_run"]
        assert not (out / d / "flowcontrol-live.json").exists()


def test_the_table_gives_session_26s_published_row(tmp_path: Path) -> None:
    """Session 26's table row for seed 72's flood run at two workers, rebuilt from its raw JSON."""
    run = json.loads(S26.read_text())["runs"]["seed 72, flood"]
    meta = {"seed": 72, "mix": "flood", "workers": 2, "start_utc": "13:57:35"}
    meta["loadavg_start"], meta["loadavg_end"] = "10.98 7.09 4.41 1/1 1", "6.25 1 1 1/1 1"
    assert table.row(meta, run["bench"]) == (
        "| 72, flood | 13:57:35 | 10.98 -> 6.25 | 334 | 0.0490 | 1.000 | 0.667 | 16.58 | 16 (1.1%) | 14.07 "
        "| 34, 0.098 | 0.048 (62%) | 0.049 | 6.2% | 0 |"
    )
