"""Issue #15, wk29: the live bench records every request it did not answer (per tenant, with why) in its
trace, and ``scripts/fc_live_ratio_interval.py --goal`` reads them as the one-process bench does, with its
own code (``flowcontrol_bench.ttft_pct`` / ``p90_ratio``): a quiet request never answered is later than every
answer (fc28), a shed one is in no percentile. Before (main 11cbef01) the live trace held answered requests
only and ``--goal`` paired those alone, so a flood run that left a tenth of its quiet requests unanswered
read as met. Every case fails on 11cbef01 (no ``not_answered``, no ``trace_not_answered``, ``--goal`` blind to
them). No process, no timing."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

from kvgate.bench import flowcontrol_bench as fc
from kvgate.bench import flowcontrol_live as fl
from kvgate.bench.live_fleet import FleetSpec
from kvgate.bench.loadgen import RequestResult

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_live_ratio_interval as ri


def _results() -> list[RequestResult]:
    return [
        RequestResult("t1", 1.0, ok=True, status=200, ttft=0.01, timing="recv=0,picked=0.001,first=0.01"),
        RequestResult("t1", 2.0, status=429, error="http 429: band full"),
        RequestResult("t0", 3.0, status=503, error="http 503: ttl"),
        RequestResult("t2", 4.0, error="cut: no first token by the run's end"),
        RequestResult("batch", 5.0, status=500, error="http 500: boom"),
        RequestResult("t3", 6.0, error="TimeoutError: "),
    ]


def test_not_answered_rows_name_tenant_start_and_why() -> None:
    rows = fl.not_answered(_results(), 2.0)  # (simulated seconds: wall x time scale)
    assert rows == [
        ["t1", 4.0, "shed 429"],
        ["t0", 6.0, "shed 503"],
        ["t2", 8.0, "unanswered: cut"],
        ["batch", 10.0, "unanswered: http 500"],
        ["t3", 12.0, "unanswered: TimeoutError"],
    ]


def test_run_arm_puts_them_in_the_timing_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    """``run_arm`` with ``timing``: the JSON's run holds ``trace_not_answered`` beside ``trace``, and its
    rows agree with the bench's own outcomes (shed: a 429 / 503 status; unanswered: ``fc.unanswered``)."""

    class _Stub:
        async def stop(self) -> None:
            return None

    async def start_fleet(spec: FleetSpec) -> tuple[list[Any], list[str]]:
        return [_Stub()], ["http://127.0.0.1:1"]

    async def start_gateway(doc: dict[str, Any], workers: int = 1) -> tuple[Any, str]:
        return _Stub(), "http://127.0.0.1:2"

    async def run(reqs: Any, cfg: Any) -> list[RequestResult]:
        return _results()

    async def sim_states(session: Any, urls: list[str]) -> list[dict[str, Any]]:
        return []

    monkeypatch.setattr(fl, "start_fleet", start_fleet)
    monkeypatch.setattr(fl, "start_gateway", start_gateway)
    monkeypatch.setattr(fl.loadgen, "run", run)
    monkeypatch.setattr(fl, "sim_states", sim_states)
    monkeypatch.setattr(fl, "lag_summary", lambda before, after, ts: {})
    spec = FleetSpec(replicas=1, profile="sim-small", time_scale=1.0, max_num_seqs=16)
    got, extra = asyncio.run(fl.run_arm("kvgate", [], spec, 10.0, 30.0, timing=True))
    rows = extra["trace_not_answered"]
    shed = {(r[0], r[1]) for r in rows if r[2].startswith("shed")}
    lost = {(r[0], r[1]) for r in rows if r[2].startswith("unanswered")}
    assert shed == {(o.tenant, o.start) for o in got.outcomes if o.status}
    assert lost == {(o.tenant, o.start) for o in got.outcomes if fc.unanswered(o)}
    assert [r[0] for r in extra["trace"]] == ["t1"]


def _doc(mix: str, ttft: float, lost: int, shed: int, n: int = 40) -> dict[str, Any]:
    """A ``*/MIX`` run of tenant t1's ``n`` requests one second apart from 6 s: the first ``lost`` left
    unanswered, the next ``shed`` shed, the rest answered at ``ttft`` (+ 0.1 ms each)."""
    trace, missing = [], []
    for i in range(n):
        start = 6.0 + i
        if i < lost:
            missing.append(["t1", start, "unanswered: cut"])
        elif i < lost + shed:
            missing.append(["t1", start, "shed 503"])
        else:
            trace.append(["t1", start, ttft + 0.0001 * i, 0, 0, "r"])
    missing.append(["t0", 6.5, "shed 429"])  # (the flooder's: not a quiet request)
    return {"runs": {f"a/{mix}": {"trace": trace, "trace_not_answered": missing}}}


def _goal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], calm: dict[str, Any], flood: dict[str, Any]
) -> str:
    paths = []
    for name, doc in (("calm", calm), ("flood", flood)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(doc))
        paths.append(str(path))
    ri.compare(paths, 200, 5.0, goal=True)
    return capsys.readouterr().out


def test_goal_reads_unanswered_quiet_requests_as_later_than_every_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flood run that left 12 of 40 quiet requests unanswered: its p90 falls among them (``inf``), the goal
    is not met and no draw (seeded) shows it met. 11cbef01 paired the 28 answered ones: 1.2x, met."""
    out = _goal(tmp_path, capsys, _doc("calm", 0.02, 0, 0), _doc("flood", 0.024, 12, 0))
    assert "40 quiet requests matched" in out, out
    assert "(in the pairs, not answered: calm 0 unanswered, 0 shed, flood 12 unanswered, 0 shed)" in out, out
    assert "= inf," in out and "share of draws over 1.5: 1.00" in out, out


def test_goal_leaves_shed_quiet_requests_out_of_the_percentile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same 5 shed instead: in no percentile (the bench's reading), so the figure is the answered ones'
    p90 over the calm run's, the bench's own ``p90_ratio`` of its ``ttft_pct``s."""
    calm, flood = _doc("calm", 0.02, 0, 0), _doc("flood", 0.024, 0, 5)
    out = _goal(tmp_path, capsys, calm, flood)
    want = fc.p90_ratio(
        fc.ttft_pct([r[2] for r in flood["runs"]["a/flood"]["trace"]], 0, 90),
        fc.ttft_pct([r[2] for r in calm["runs"]["a/calm"]["trace"]], 0, 90),
    )
    assert want is not None and 1.1 < want < 1.5
    assert f"= {want:.3f}," in out and "flood 0 unanswered, 5 shed" in out, out


def test_a_calm_run_with_no_baseline_cannot_show_the_goal_met() -> None:
    """The bench's ``p90_ratio`` gives no ratio where the calm p90 falls among unanswered requests; a draw
    with none reads ``inf`` (never a 0.0 ratio, met by the widest margin)."""
    pairs: list[tuple[Any, Any]] = [(ri.UNANSWERED, 0.02)] * 5 + [(0.02, 0.02)] * 15
    assert ri.goal_ratio(pairs) == math.inf
    assert ri.goal_ratio([(0.02, 0.03)] * 20) == pytest.approx(1.5)
