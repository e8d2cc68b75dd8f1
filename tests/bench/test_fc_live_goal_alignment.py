"""``scripts/fc_live_ratio_interval.py --goal``: a tenant's calm and flood starts are paired by an
order-preserving alignment (review s23-rev-fix23a F2: the nearest starts first gave a survivor its lost
neighbour's pair, and could swap two answered neighbours)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_live_ratio_interval as ri


def _pairs(calm: list[list[Any]], flood: list[list[Any]]) -> list[tuple[float, float]]:
    return ri.matched_goal(
        {"runs": {"a/calm": {"trace": calm}}}, {"runs": {"a/flood": {"trace": flood}}}, 5.0
    )


def test_a_late_survivor_keeps_its_own_pair() -> None:
    """Review s23-rev-fix23a F2 (its test, moved): A's flood start is 5 ms late (session 23: up to 5.6 ms),
    3 ms before its neighbour B's calm start, and B is not answered in the flood: A keeps its pair, B drops
    out alone. Fails on a6977267 (the nearest start: B took A's flood TTFT, A dropped out)."""
    calm = [["t0", 10.000, 0.02, 0, 0, "r"], ["t0", 10.008, 0.03, 0, 0, "r"]]
    flood = [["t0", 10.005, 0.09, 0, 0, "r"]]
    assert _pairs(calm, flood) == [(0.02, 0.09)]


def test_answered_neighbours_are_not_swapped() -> None:
    """Both answered, A's flood start 3.9 ms late (0.1 ms from B's calm start), B's 0.5 ms late: each keeps
    its own pair, in order. Fails on a6977267 (the nearest start paired B with A's flood run first, then A
    with B's)."""
    calm = [["t0", 10.000, 0.02, 0, 0, "r"], ["t0", 10.004, 0.03, 0, 0, "r"]]
    flood = [["t0", 10.0039, 0.08, 0, 0, "r"], ["t0", 10.0045, 0.09, 0, 0, "r"]]
    assert _pairs(calm, flood) == [(0.02, 0.08), (0.03, 0.09)]


def test_an_early_flood_start_still_pairs_where_it_is_the_only_one() -> None:
    """A flood start before its calm one (within ``GOAL_MATCH_S``) pairs when no later-than-calm pairing
    competes; starts further apart than the window never pair."""
    calm = [["t0", 10.000, 0.02, 0, 0, "r"], ["t0", 11.000, 0.03, 0, 0, "r"]]
    flood = [["t0", 9.997, 0.08, 0, 0, "r"], ["t0", 11.000 + ri.GOAL_MATCH_S * 1.5, 0.09, 0, 0, "r"]]
    assert _pairs(calm, flood) == [(0.02, 0.08)]
