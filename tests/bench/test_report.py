"""The report writer: summary figures from known inputs, JSON/markdown/PNG files on disk."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from kvgate.bench import report


def _collector() -> report.Collector:
    c = report.Collector(slo_ttft=1.0)
    # 10 requests, TTFT 0.1..1.0 s, each 11 tokens over 1 s of decode -> TPOT 0.1 s.
    for i in range(10):
        ttft = 0.1 * (i + 1)
        c.add(
            start=float(i),
            ok=True,
            ttft=ttft,
            e2e=ttft + 1.0,
            prompt_tokens=100,
            completion_tokens=11,
            itl=[0.1] * 10,
        )
    c.add(
        start=10.0, ok=False, ttft=None, e2e=None, prompt_tokens=0, completion_tokens=0, error="http 503: x"
    )
    return c


def test_summary_figures() -> None:
    row = _collector().summary(duration=10.0, hit_rate=0.25)
    assert row["requests"] == 11 and row["ok"] == 10 and row["errors"] == 1
    assert row["error_kinds"] == {"http 503": 1}
    assert row["ttft_p50"] == pytest.approx(0.55)
    assert row["ttft_p90"] == pytest.approx(0.91)
    assert row["tpot_p50"] == pytest.approx(0.1)
    assert row["itl_p99"] == pytest.approx(0.1)
    assert row["output_tok_per_s"] == pytest.approx(11.0)
    # TTFT < 1.0 s: 9 of 11 requests (1.0 itself misses, the error misses).
    assert row["goodput_share"] == pytest.approx(9 / 11)
    assert row["prefix_hit_rate"] == 0.25


def test_itl_reservoir_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "ITL_RESERVOIR", 100)
    c = report.Collector()
    for i in range(10_000):
        c.add_itl(float(i))
    assert len(c.itl) == 100
    # Uniform sample over the whole stream, not just the first gaps.
    assert max(c.itl) > 5_000


def test_load_series_cv_and_thinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "LOAD_POINTS", 10)
    s = report.LoadSeries()
    for t in range(1000):
        s.add(float(t), [0.0, 10.0] if t % 2 else [5.0, 5.0], [0.5, 0.5])
    assert len(s.times) < 20 and s.times[-1] > 900
    summ = s.summary()
    assert summ["queue_cv_mean"] == pytest.approx(0.5)  # half the samples CV 1, half 0
    assert summ["kv_cv_mean"] == 0.0


def test_files_written(tmp_path: Path) -> None:
    c = _collector()
    rows = [
        c.summary(duration=10.0) | {"policy": p, "qps": q}
        for p in ("kvgate", "round-robin")
        for q in (1.0, 2.0)
    ]
    report.write_json(tmp_path / "r.json", {"rows": rows})
    assert orjson.loads((tmp_path / "r.json").read_bytes())["rows"][0]["policy"] == "kvgate"
    table = report.markdown_table(rows, [("policy", "policy"), ("QPS", "qps")])
    lines = table.splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[2].startswith("| kvgate | 1.00 | 550 | 910 |")
    report.plot_ttft_vs_qps(tmp_path / "t.png", rows, "t")
    report.plot_load(tmp_path / "l.png", {"kvgate": c.load}, "l")
    for name in ("t.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
