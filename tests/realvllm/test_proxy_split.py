"""``scripts/realvllm/proxy_split.py``'s argument checks and ``--report`` pooling: no vLLM (the fleet is
replaced where a run would start one). Review s14-rv L1, L2, N3."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "proxy_split.py"


def _script() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))  # (it imports vs_sglang from its own folder)
    spec = importlib.util.spec_from_file_location("proxy_split_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _no_servers(mod: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    @contextmanager
    def no_fleet(*a: Any, **k: Any) -> Iterator[None]:  # a real run would start vLLM here
        raise AssertionError("the vLLM fleet was started before the arguments were checked")
        yield

    def no_install(*a: Any, **k: Any) -> None:
        raise AssertionError("sglang-router was installed before the arguments were checked")

    monkeypatch.setattr(mod, "fleet", no_fleet)
    monkeypatch.setattr(mod.peers, "ensure_installed", no_install)
    monkeypatch.setattr(mod, "commit", lambda *a: "x")


@pytest.mark.parametrize(
    "paths", ["direct,kvgate@base", "direct,kvgate@base,kvgate,sglang", "direct,sglng", "kvgate,kvgate@other"]
)
def test_bad_paths_are_a_usage_error_before_any_server(
    paths: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kvgate@base`` without ``--base-src``, or a path that is none of the four (a typo was launched as
    sglang-router): exit 2 before vLLM or sglang-router is installed or started."""
    mod = _script()
    _no_servers(mod, monkeypatch)
    monkeypatch.setattr(sys, "argv", ["proxy_split.py", "--paths", paths, "--prompts", "1"])
    with pytest.raises(SystemExit) as e:
        mod.main()
    assert e.value.code == 2
    assert "--paths" in capsys.readouterr().err


def _rec(send: float, ttft_ms: float) -> dict[str, float]:
    return {"send": send, "c_first": send + ttft_ms / 1000, "vllm_ttft": ttft_ms / 2000}


def _run(tmp_path: Path, name: str, ms: dict[str, tuple[list[float], list[float]]]) -> Path:
    """A run file: per path, the misses' and the hits' client TTFTs (ms), one per prompt."""
    recs = {
        p: {"miss": [_rec(i, t) for i, t in enumerate(m)], "hit": [_rec(i + 0.5, t) for i, t in enumerate(h)]}
        for p, (m, h) in ms.items()
    }
    f = tmp_path / name
    f.write_text(json.dumps({"records": recs}))
    return f


def test_report_with_a_path_the_file_lacks_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``F:PATH`` with a PATH not in F used to drop F's kvgate and pool without kvgate, exit 0."""
    mod = _script()
    f = _run(tmp_path, "run.json", {p: ([50.0], [20.0]) for p in ("direct", "kvgate", "sglang")})
    monkeypatch.setattr(sys, "argv", ["proxy_split.py", "--report", f"{f}:kvgate@bse"])
    with pytest.raises(SystemExit) as e:
        mod.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "kvgate@bse" in err and "run.json" in err


def test_report_pools_runs_in_order_and_reads_path_as_kvgate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs pooled: requests concatenated in run order for every path (the per-prompt pairing kept),
    ``:kvgate@base`` read as kvgate (the file's own kvgate dropped), a path not in every file left out;
    kvgate over sglang-router both per prompt (geomean) and as the ratio of the means."""
    mod = _script()
    a = _run(tmp_path, "a.json", {
        "direct": ([40.0, 40.0], [10.0, 10.0]),
        "kvgate": ([60.0, 30.0], [20.0, 20.0]),
        "sglang": ([30.0, 60.0], [10.0, 10.0]),
    })  # fmt: skip
    b = _run(tmp_path, "b.json", {
        "kvgate@base": ([50.0], [40.0]),
        "kvgate": ([999.0], [999.0]),
        "sglang": ([50.0], [10.0]),
    })  # fmt: skip
    pooled, runs = mod.pool([str(a), f"{b}:kvgate@base"])
    assert list(pooled) == ["kvgate", "sglang"]  # direct is not in b
    assert [round(1000 * (r["c_first"] - r["send"])) for r in pooled["kvgate"]["miss"]] == [60, 30, 50]
    assert [round(1000 * (r["c_first"] - r["send"])) for r in pooled["sglang"]["hit"]] == [10, 10, 10]
    assert "kvgate@base" not in runs[1] and len(runs) == 2

    out = mod.report(pooled)
    miss, hit = out["miss"]["kvgate/sglang"], out["hit"]["kvgate/sglang"]
    assert miss["ratios"] == pytest.approx([2.0, 0.5, 1.0])
    assert miss["geomean"] == pytest.approx(1.0)
    assert miss["mean_ratio"] == pytest.approx(140 / 140)
    assert hit["geomean"] == pytest.approx(math.exp(math.log(2 * 2 * 4) / 3))
    assert hit["mean_ratio"] == pytest.approx(80 / 30)

    # Per run, the ratio of the means and their geomean (vs_sglang.py's per-pass statistic).
    assert mod.run_mean_ratios(runs, "kvgate", "sglang", "miss") == pytest.approx([1.0, 1.0])
    assert mod.run_mean_ratios(runs, "kvgate", "sglang", "hit") == pytest.approx([2.0, 4.0])

    monkeypatch.setattr(sys, "argv", ["proxy_split.py", "--report", str(a), f"{b}:kvgate@base"])
    assert mod.main() == 0
    text = capsys.readouterr().out
    assert "not in every file, not pooled: direct" in text
    assert "ratio of the means per run 2.000x 4.000x, geomean 2.828x" in text
