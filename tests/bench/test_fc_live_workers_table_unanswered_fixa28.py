"""Review s28-rev-a28 F3 (fixa28): ``write_json`` (orjson) writes fc28's ``inf`` p90 (one among unanswered
requests) as ``null``, and ``scripts/fc_live_workers_table.py`` formatted the quiet and flood-tenant p90 with
``:.4f`` / ``:.2f``: TypeError on the very run fc28's rule is about. Now a null p90 reads "inf (N unanswered)"
where the group's ``unfinished`` says so, else "- (no requests)". Fails on main 974e848b (TypeError). No
process, no timing."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from kvgate.bench import flowcontrol_bench as fb
from kvgate.bench.report import write_json

ROOT = Path(fb.__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "scripts"))

import fc_live_workers_table as table  # noqa: E402


def _bench(tmp_path: Path, outcomes: list[fb.Outcome]) -> dict:
    run = fb.Run("kvgate-reserve-feasible", outcomes, duration=20.0)
    r = {**fb.summarize(run, 0.0), "errors": 0, "sim_late_frac": 0.0,
         "trace_summary": {"slowest_tenth": {"n": 1, "ttft_mean": 0.02, "epp_mean": 0.0, "epp_over_1ms": 0.0,
                                             "server_mean": 0.0}}}  # fmt: skip
    write_json(tmp_path / "flowcontrol-live.json", {"runs": {"kvgate-reserve-feasible/calm": r}})
    return dict(json.loads((tmp_path / "flowcontrol-live.json").read_text()))


META = {"seed": 78, "mix": "calm", "workers": 2, "loadavg_start": "1.0 1.0 1.0 1/1 1",
        "loadavg_end": "1.0 1.0 1.0 1/1 1", "start_utc": "20:00:00"}  # fmt: skip


def test_the_table_reads_a_p90_among_unanswered_requests(tmp_path: Path) -> None:
    quiet = [fb.Outcome(q, 10.0 + i, ttft=0.02) for q in fb.QUIET for i in range(8)]
    quiet += [fb.Outcome(q, 10.0 + i) for q in fb.QUIET for i in range(2)]  # never answered
    flood = [fb.Outcome(fb.FLOOD, 10.0 + i) for i in range(3)]  # (the flood tenant: none answered)
    others = [fb.Outcome(t, 10.0, ttft=0.02) for t in (fb.CRITICAL, fb.BATCH)]
    bench = _bench(tmp_path, quiet + flood + others)
    assert bench["runs"]["kvgate-reserve-feasible/calm"]["quiet"]["p90_ttft_s"] is None  # (inf, as null)
    cells = [c.strip() for c in table.row(META, bench).split("|")]  # main 974e848b: TypeError
    assert cells[1] == "78, calm"
    assert cells[5] == "inf (8 unanswered)", cells[5]  # (quiet p90 s)
    assert cells[8] == "inf (3 unanswered)", cells[8]  # (flood tenant p90 s)


def test_a_null_p90_with_nothing_unanswered_is_no_requests() -> None:
    assert table._p90({"p90_ttft_s": None, "unfinished": 0, "requests": 0}, 4) == "- (no requests)"
    assert table._p90({"p90_ttft_s": math.pi, "unfinished": 0}, 2) == "3.14"
