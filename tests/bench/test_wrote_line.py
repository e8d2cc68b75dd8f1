"""A bench's closing ``wrote ...`` line names every file the run wrote (docs/benchmarks.md: "the run ends
with a `wrote ...` line naming its files"). Review s13-tidy N1: sweep left out ``-load.png``, multicluster
and multicluster --live their plots."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from kvgate.bench import multicluster, multicluster_live
from kvgate.bench.sweep import run_scenario

from .test_sweep import _toy


def _named(text: str) -> set[str]:
    lines = [ln for ln in text.splitlines() if ln.startswith("wrote ")]
    assert lines, "no 'wrote ...' line"
    return {Path(p).name for p in re.split(r",\s*", lines[-1][len("wrote ") :])}


def _written(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_file()}


def test_a_fleet_scenario_names_its_load_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_scenario(_toy(), quick=True, seed=0, out=tmp_path)
    named, written = _named(capsys.readouterr().out), _written(tmp_path)
    assert "fleet-toy-quick-load.png" in written
    assert named == written


class _FakeSim:
    """Stands in for MultiClusterSim (a real run takes ~30 s): one row per run, a short loss timeline."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.loss_at, self.back_at = (1.0, 2.0) if cfg.loss else (None, None)
        self.timeline = [(0.5, "east", 0.1), (1.5, "eu", 0.3), (2.5, "west", 0.2)]

    def run(self) -> dict[str, Any]:
        return {
            "phase": "loss" if self.cfg.loss else "steady", "policy": self.cfg.policy, "ttft_p50": 0.1,
            "ttft_p90": 0.2, "goodput_req_per_s": 1.0, "cross_cluster_share": 0.1, "lost": 0, "cut": 0,
            "retries": 0, "served_by": {"east": 1}, "wall_s": 0.0,
        }  # fmt: skip


@pytest.mark.parametrize("policies", ["kvgate", "kvgate,llm-d-hub"])
def test_multicluster_names_its_plots(
    policies: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """(One policy: plot_timeline's lone subplot is an Axes, not an array; the run used to crash there.)"""
    monkeypatch.setattr(multicluster, "MultiClusterSim", _FakeSim)
    monkeypatch.setattr(multicluster, "fleet_capacity", lambda *a: {"east": 10.0, "west": 10.0, "eu": 5.0})
    assert multicluster.main(["--quick", "--policies", policies, "--out", str(tmp_path)]) == 0
    named, written = _named(capsys.readouterr().out), _written(tmp_path)
    assert {"multicluster-quick.png", "multicluster-quick-loss.png"} <= written
    assert named == written


def _live_row(phase: str, policy: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "phase": phase, "policy": policy, "ttft_p50": 0.1, "ttft_p90": 0.2, "goodput_req_per_s": 1.0,
        "cross_cluster_share": 0.1, "lost": 0, "cut": 0, "retries": 0, "served_by": {"east": 2},
        "timeline": [(0.5, "east", 0.1), (1.5, "eu", None)],
    }  # fmt: skip
    if phase != "steady":
        row["loss_at_s"], row["back_at_s"] = 1.0, 2.0
    return row


@pytest.mark.parametrize("phases", [["steady"], ["steady", "loss"]])
def test_multicluster_live_names_its_plots(phases: list[str], tmp_path: Path) -> None:
    cfg = multicluster_live.LiveConfig()
    rows = [_live_row(ph, pol) for ph in phases for pol in ("kvgate", "llm-d-hub")]
    meta = {
        "slo_ttft": 2.0, "clusters": [{"name": d.name} for d in cfg.clusters],
        "ttft_floor_s": multicluster_live.ttft_floors(rows), "wall_s_total": 1.0,
    }  # fmt: skip
    log = io.StringIO()
    multicluster_live.write_report(tmp_path, rows, meta, cfg, log)
    named, written = _named(log.getvalue()), _written(tmp_path)
    assert "multicluster-live.png" in written
    assert ("multicluster-live-loss.png" in written) == ("loss" in phases)  # no loss phase: no loss plot
    assert named == written
