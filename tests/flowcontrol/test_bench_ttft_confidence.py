"""`kvgate bench flowcontrol --ttft-confidence Z` sets ``flowControl.fairShareTTFTConfidence`` in the kvgate
arms, simulated and live, so docs/benchmarks/flowcontrol.md's z = 0 vs 1.645 runs come from a repo command
(review s11-docs L9; they were made with a monkeypatching script, bench_z.py, outside the repo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from kvgate.bench.cli import main
from kvgate.bench.flowcontrol_bench import arm_config
from kvgate.bench.flowcontrol_live import gateway_config
from kvgate.flowcontrol import controller as c

ARGS = ["flowcontrol", "--replicas", "2", "--max-num-seqs", "4", "--duration", "4", "--warmup", "1",
        "--arms", "reference,kvgate-reserve-feasible", "--headroom", "0.75", "--headroom-on", "pending",
        "--ttft-target", "0.05", "--running-reserve"]  # fmt: skip


def test_the_key_is_set_only_when_asked_and_only_in_kvgate_arms() -> None:
    assert "fairShareTTFTConfidence" not in arm_config("kvgate-reserve-feasible", 10.0)["flowControl"]
    for arm in ("kvgate", "kvgate-reserve", "kvgate-reserve-feasible"):
        doc = arm_config(arm, 10.0, ttft_confidence=0.0)
        assert doc["flowControl"]["fairShareTTFTConfidence"] == 0.0, arm
    assert "fairShareTTFTConfidence" not in arm_config("reference", 10.0, ttft_confidence=0.0)["flowControl"]
    live = gateway_config("kvgate-reserve", ["http://a"], 10.0, 16, ttft_confidence=0.0)
    assert live["pools"][0]["endpointPickerConfig"]["flowControl"]["fairShareTTFTConfidence"] == 0.0


def _runs(tmp_path: Path, extra: list[str]) -> dict[str, Any]:
    assert main([*ARGS, *extra, "--out", str(tmp_path)]) == 0
    runs: dict[str, Any] = orjson.loads((tmp_path / "flowcontrol.json").read_bytes())["runs"]
    return runs


def test_the_flag_reaches_the_controller_as_bench_z_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    orig = c.FlowController.__init__

    def spy(self: c.FlowController, *a: Any, **k: Any) -> None:
        orig(self, *a, **k)
        seen.append(self._aim_z)

    monkeypatch.setattr(c.FlowController, "__init__", spy)
    flag = _runs(tmp_path / "flag", ["--ttft-confidence", "0"])
    assert 0.0 in seen and seen.count(0.0) == 3  # the kvgate arm, one per mix; the reference keeps 1.645
    seen.clear()

    def patched(self: c.FlowController, *a: Any, **k: Any) -> None:  # what bench_z.py did
        orig(self, *a, **k)
        self._aim_z = 0.0
        self.aim = c.aim_miss(1.0 - c.TARGET_QUANTILE, c.AIM_MIN_SAMPLE, 0.0)
        self.engine_miss = self.aim / 2

    monkeypatch.setattr(c.FlowController, "__init__", patched)
    assert _runs(tmp_path / "patched", []) == flag
    monkeypatch.setattr(c.FlowController, "__init__", orig)
    assert _runs(tmp_path / "default", []) != flag  # (so z matters in this run)
