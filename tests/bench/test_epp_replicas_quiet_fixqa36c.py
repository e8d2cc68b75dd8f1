"""Review qa36c F11: ``kvgate bench epp-replicas`` printed gRPC core's "Got goaway" INFO lines on stderr
before its table: its EPP servers were stopped with no grace, cancelling the streams' transports with
GOAWAY INTERNAL_ERROR. Stopped with a grace, the run's stderr holds nothing of gRPC's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kvgate.extproc.server")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_epp_replicas_stderr_has_no_goaway_lines(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("GRPC_VERBOSITY", None)  # (gRPC's default: its INFO lines are what the user saw)
    cp = subprocess.run(
        [sys.executable, "-m", "kvgate.cli", "bench", "epp-replicas", "--engines", "2", "--sessions", "6",
         "--turns", "2", "--repeats", "3", "--think-s", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert "one EPP" in cp.stdout, cp.stdout
    assert "goaway" not in cp.stderr.lower(), cp.stderr[-2000:]
