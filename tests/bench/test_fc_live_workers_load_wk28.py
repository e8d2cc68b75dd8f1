"""``scripts/fc_live_workers_seeds.sh`` samples ``/proc/loadavg`` while each bench runs, not only at its two
ends (wk28: the machine is shared, and session 27's seed 76 showed the load rising 12 -> 23 through one
run), and ``scripts/fc_live_workers_table.py`` prints the peak of those samples. Both fail on main 2a9ab840
(meta.json had no "loadavg_during"; the table printed no peak). The runner is driven with a stand-in for
``kvgate`` that runs for a few seconds, a lock file in tmp_path and a cut-off no clock reading can cross
("24:00"); the sampler's sleep must not outlive its run (it would hold the lock: the second run's hold
would wait for it)."""

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

sys.path.insert(0, str(ROOT / "scripts"))

import fc_live_workers_table as table  # noqa: E402

SLOW_KVGATE = """#!/usr/bin/env bash
out=
while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
sleep 3.5
echo '{"fake": true}' > "$out/flowcontrol-live.json"
"""


needs_flock = pytest.mark.skipif(
    shutil.which("flock") is None, reason="the runner holds its lock with flock(1)"
)


def _run(tmp_path: Path, fake: Path, out: Path, every: str) -> None:
    env = dict(os.environ, KVGATE=str(fake), LOCK=str(tmp_path / "lock"), WORKERS="2", LOAD_EVERY=every)
    cmd = ["bash", str(RUNNER), str(tmp_path / "src"), str(out), "24:00", "78"]
    subprocess.run(cmd, env=env, check=True, timeout=120)


@needs_flock
def test_the_samplers_sleep_does_not_hold_the_lock_past_its_run(tmp_path: Path) -> None:
    """A sampler that sleeps 600 s and a bench that ends at once: the flood run's hold must not wait for
    the calm run's sleep (its orphan would keep the lock's descriptor, inherited from flock(1))."""
    fake = tmp_path / "kvgate"
    fake.write_text(SLOW_KVGATE.replace("sleep 3.5", ":"))
    fake.chmod(0o755)
    (tmp_path / "src").mkdir()
    _run(tmp_path, fake, tmp_path / "out", every="600")
    for mix in ("calm", "flood"):
        meta = json.loads((tmp_path / "out" / f"seed-78-{mix}-w2" / "meta.json").read_text())
        assert meta["rc"] == 0 and meta["loadavg_during"] == []


@needs_flock
def test_the_runner_samples_the_load_while_the_bench_runs(tmp_path: Path) -> None:
    fake = tmp_path / "kvgate"
    fake.write_text(SLOW_KVGATE)
    fake.chmod(0o755)
    (tmp_path / "src").mkdir()
    out = tmp_path / "out"
    _run(tmp_path, fake, out, every="1")
    for mix in ("calm", "flood"):
        meta = json.loads((out / f"seed-78-{mix}-w2" / "meta.json").read_text())
        assert meta["rc"] == 0
        during = meta["loadavg_during"]
        assert during, "no sample in a 3.5 s run sampled every 1 s"  # (a loaded machine may skip some)
        for when, loadavg in during:
            assert len(when.split(":")) == 3 and len(loadavg.split()) == 5  # UTC time, /proc/loadavg
        assert meta["start_utc"] <= during[0][0] <= meta["end_utc"] or meta["start_utc"] > meta["end_utc"]


def test_the_table_prints_the_peak_load_while_running() -> None:
    r = {
        "bands": {"critical-x": {"slo_attainment": 1.0}, "batch-x": {"slo_attainment": 0.5}},
        "trace_summary": {"slowest_tenth": {"n": 3, "ttft_mean": 0.1, "epp_mean": 0.05, "epp_over_1ms": 0.5,
                                            "server_mean": 0.04}},
        "quiet": {"requests": 10, "p90_ttft_s": 0.04}, "tenants": {"t0": {"p90_ttft_s": 20.0}},
        "shed": 0, "shed_rate": 0.0, "goodput_rps": 9.0, "sim_late_frac": 0.01, "errors": 0,
    }  # fmt: skip
    meta = {"seed": 78, "mix": "flood", "workers": 2, "start_utc": "20:10:00",
            "loadavg_start": "3.00 1 1 1/1 1", "loadavg_end": "5.50 1 1 1/1 1",
            "loadavg_during": [["20:10:30", "4.25 1 1 1/1 1"], ["20:11:00", "12.75 1 1 1/1 1"]]}  # fmt: skip
    row = table.row(meta, {"runs": {"x": r}})
    assert "| 78, flood | 20:10:00 | 3.00 -> 5.50 (peak 12.75) | 10 | 0.0400 |" in row
