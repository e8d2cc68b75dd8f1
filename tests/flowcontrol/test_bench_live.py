"""`kvgate bench flowcontrol --live` runs end to end: a real `kvgate serve` in front of a one-replica
simulated fleet for a few seconds, table printed and JSON written; no figures asserted."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvgate.bench.cli import main


def test_bench_flowcontrol_live_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["flowcontrol", "--live", "--replicas", "1", "--max-num-seqs", "16", "--duration", "2",
            "--warmup", "0.5", "--base-rate", "0.5", "--arms", "kvgate", "--mixes", "flood",
            "--time-scale", "1", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    doc = orjson.loads((tmp_path / "flowcontrol-live.json").read_bytes())
    run = doc["runs"]["kvgate/flood"]
    assert run["requests"] > 0 and run["errors"] == 0
    assert set(run["bands"]) == {"critical (10)", "interactive (0)", "batch (-1)"}
    # Every measured request got an answer (served or shed) through the gateway.
    assert sum(g["unfinished"] for g in run["bands"].values()) == 0
    assert "sim_lag_mean_ms" in run and doc["command"].startswith("kvgate bench flowcontrol --live")
    out = capsys.readouterr().out
    assert "| kvgate/flood |" in out and "Simulator lag per run:" in out
