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


def test_bench_flowcontrol_live_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--workers 2``: the gateway under test is ``kvgate serve --workers 2`` (issue #15: what per-worker
    flow-control state costs); the JSON and the table's head say so."""
    from kvgate.bench import flowcontrol_live

    started: list[list[str]] = []
    real = flowcontrol_live.procs.start

    async def start(name: str, cmd: list[str], *a: object, **kw: object) -> object:
        started.append(list(cmd))
        return await real(name, cmd, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(flowcontrol_live.procs, "start", start)
    args = ["flowcontrol", "--live", "--replicas", "1", "--max-num-seqs", "16", "--duration", "2",
            "--warmup", "0.5", "--base-rate", "0.5", "--arms", "kvgate", "--mixes", "flood",
            "--time-scale", "1", "--workers", "2", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    serve = [c for c in started if "serve" in c]
    assert len(serve) == 1 and serve[0][serve[0].index("--workers") + 1] == "2"
    doc = orjson.loads((tmp_path / "flowcontrol-live.json").read_bytes())
    assert doc["workers"] == 2 and doc["runs"]["kvgate/flood"]["errors"] == 0
    assert "gateway --workers 2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args[:-4], "--workers", "0", "--out", str(tmp_path)])


def test_bench_flowcontrol_live_timing(tmp_path: Path) -> None:
    """``--timing`` (session 21's trace): every quiet request answered carries kvgate's marks, split into its
    wait in kvgate and the rest (each part at least 0, together at most its TTFT), summarized."""
    args = ["flowcontrol", "--live", "--replicas", "1", "--max-num-seqs", "16", "--duration", "2",
            "--warmup", "0.5", "--base-rate", "0.5", "--arms", "kvgate", "--mixes", "flood",
            "--time-scale", "1", "--timing", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    run = orjson.loads((tmp_path / "flowcontrol-live.json").read_bytes())["runs"]["kvgate/flood"]
    q = run["quiet"]
    quiet = q["requests"] - q["shed"] - q["unfinished"]  # (answered, measured)
    rows = [r for r in run["trace"] if r[1] >= 0.5]
    assert quiet > 0 and abs(len(rows) - quiet) <= 1  # (a start rounded across the warm-up line)
    for _tenant, _start, ttft, epp, after, replica in run["trace"]:
        assert epp >= 0 and after >= 0 and epp + after <= ttft + 0.001 and replica.startswith("cmpl-")
    assert run["trace_summary"]["all"]["n"] == len(rows)
