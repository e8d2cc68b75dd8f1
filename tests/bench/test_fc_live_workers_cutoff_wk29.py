"""``scripts/fc_live_workers_seeds.sh``'s cut-off as a full time (wk29): session 29's declared cut-off, 00:20
UTC, was given at 23:18 as ``00:20``, which the runner compared with the clock as text ("23:18" > "00:20"),
so it read every hold as past the cut-off and started no run. A cut-off in any form ``date -d`` reads (e.g.
``2026-12-07 00:20``) is now read once, as an instant; a plain HH:MM keeps its old reading (the wk27 tests).
The first case fails on main ec6b964f (the text comparison: no run starts; see its note). The runner is
driven with the stand-in ``kvgate`` of ``test_fc_live_workers_seeds_wk27`` (its copy) and a lock in
tmp_path; cut-offs an hour from the start, far from any run's few seconds."""

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

needs_flock = pytest.mark.skipif(
    shutil.which("flock") is None, reason="the runner holds its lock with flock(1)"
)


def _run(tmp_path: Path, cutoff: str, *seeds: str) -> tuple[Path, list[str]]:
    fake = tmp_path / "kvgate"
    fake.write_text(FAKE_KVGATE)
    fake.chmod(0o755)
    (tmp_path / "src").mkdir()
    out, calls = tmp_path / "out", tmp_path / "calls"
    env = dict(os.environ, KVGATE=str(fake), LOCK=str(tmp_path / "lock"), CALLS=str(calls), LOAD_EVERY="600")
    subprocess.run(
        ["bash", str(RUNNER), str(tmp_path / "src"), str(out), cutoff, *seeds],
        env=env,
        check=True,
        timeout=120,
    )
    return out, calls.read_text().splitlines() if calls.exists() else []


def _in(hours: int) -> str:
    """The time ``hours`` from now as ``date`` writes it with the date (UTC), e.g. ``2026-12-07 00:20``."""
    return subprocess.run(
        ["date", "-u", "-d", f"{hours:+d} hour", "+%Y-%m-%d %H:%M"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@needs_flock
@pytest.mark.parametrize("form", ["with its date", "relative"])
def test_a_cut_off_an_hour_ahead_starts_every_run(tmp_path: Path, form: str) -> None:
    """Both fail on ec6b964f: the relative form at any hour ("+" sorts before every clock reading), the form
    with its date from 20:00 UTC on (as at 23:18: "23:18" sorts after "2026-...")."""
    out, calls = _run(tmp_path, _in(1) if form == "with its date" else "+1 hour", "83")
    assert len(calls) == 4, calls
    assert json.loads((out / "seed-83-flood-w1" / "meta.json").read_text())["rc"] == 0


@needs_flock
def test_a_cut_off_with_its_date_an_hour_ago_starts_none(tmp_path: Path) -> None:
    cutoff = _in(-1)
    out, calls = _run(tmp_path, cutoff, "83")
    assert calls == []
    assert f"cut-off {cutoff}" in json.loads((out / "seed-83-calm-w2" / "meta.json").read_text())["not_run"]


def test_a_cut_off_date_cannot_read_refuses_to_start(tmp_path: Path) -> None:
    got = subprocess.run(
        ["bash", str(RUNNER), str(tmp_path), str(tmp_path / "out"), "not a time", "83"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert got.returncode == 2 and "not a time" in got.stderr
    assert not (tmp_path / "out" / "seed-83-calm-w2").exists()
