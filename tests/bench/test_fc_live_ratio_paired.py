"""``scripts/fc_live_ratio_interval.py --paired``: two codes' flood runs of one seed compared request by
request (the k-th quiet request of a tenant is the same in both)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_live_ratio_interval as ri


def _doc(rows: list[list[Any]]) -> dict[str, Any]:
    return {"runs": {"a/calm": {"trace": []}, "a/flood": {"trace": rows}}}


def test_requests_are_matched_by_tenant_and_rank_and_the_paired_ratio_is_exact() -> None:
    base = [[f"t{i % 3}", 4.0 + i * 0.1, 0.01 + 0.001 * i, 0, 0, "r"] for i in range(60)]
    # NEW: every TTFT halved, starts a few ms later, listed in another order; one request unanswered
    new = [[t, s + 0.004, ttft / 2, 0, 0, "r"] for t, s, ttft, *_ in reversed(base[:-1])]
    pairs = ri.matched(_doc(base), _doc(new), warmup=5.0)
    assert len(pairs) == 49  # (starts from 5.0 s: 50 measured, the last unanswered in NEW)
    assert all(n == b / 2 for b, n in pairs)
    draws = ri._draws([pairs, pairs], 200)
    assert draws[0] == draws[-1] == 0.5  # (paired: every draw halves the p90)


def test_goal_pairs_a_seeds_calm_and_flood_runs_by_start_and_a_missing_request_drops_alone() -> None:
    """``--goal``: the calm and flood runs of one seed have the same quiet arrivals; a request answered in
    one run only (shed in the flood) drops out alone, its successors still paired with themselves (a rank
    match would shift them all by one)."""
    calm = [[f"t{i % 2}", 4.0 + i * 0.3, 0.02, 0, 0, "r"] for i in range(40)]
    flood = [[t, s + 0.003, 0.06, 0, 0, "r"] for t, s, *_ in calm if s != 4.0 + 10 * 0.3]  # one shed
    pairs = ri.matched_goal(
        {"runs": {"a/calm": {"trace": calm}}}, {"runs": {"a/flood": {"trace": flood}}}, 5.0
    )
    assert len(pairs) == 36 - 1  # (starts from 5.0 s: 36 measured, one of them shed in the flood)
    assert all(p == (0.02, 0.06) for p in pairs)
    draws = ri._draws([pairs], 100)
    assert draws[0] == pytest.approx(3.0) and draws[-1] == pytest.approx(
        3.0
    )  # (flood p90 / calm p90, each draw)


def test_a_dropped_request_does_not_take_its_neighbours_pair() -> None:
    """Review s23-rev-flow23 F4 (its test, moved): two same-tenant requests start 20 ms apart and the first
    is not answered in the flood run; the survivor keeps its own calm pair, the dropped one drops out
    alone (FAILS on main 83f8785f: greedy matching within 50 ms paired it with the earlier one)."""
    calm = [["t0", 10.000, 0.02, 0, 0, "r"], ["t0", 10.020, 0.03, 0, 0, "r"]]
    flood = [["t0", 10.021, 0.09, 0, 0, "r"]]
    pairs = ri.matched_goal(
        {"runs": {"a/calm": {"trace": calm}}}, {"runs": {"a/flood": {"trace": flood}}}, 5.0
    )
    assert pairs == [(0.03, 0.09)], pairs
