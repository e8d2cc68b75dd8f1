"""``scripts/fc_live_ratio_interval.py --goal``: a tenant's calm and flood starts are paired by the nearest
start in an order-preserving alignment (review s23-rev-fix23a F2: the nearest starts first, one pair at a
time, could swap two answered neighbours). No sign of the gap is preferred (review s24-rev-fix24 F1: session
23's flood starts are as often early as late). The limit, kept in view: with one survivor between two calm
starts a few ms apart, starts alone cannot tell whose it is (it takes the nearer); an arrival index in the
trace would."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import fc_live_ratio_interval as ri

S23 = Path(__file__).resolve().parents[2] / "docs/benchmarks/flowcontrol-live-workers-s23.json"


def _pairs(calm: list[list[Any]], flood: list[list[Any]], warmup: float = 5.0) -> list[tuple[float, float]]:
    return ri.matched_goal(
        {"runs": {"a/calm": {"trace": calm}}}, {"runs": {"a/flood": {"trace": flood}}}, warmup
    )


def test_a_survivor_slightly_early_keeps_its_own_pair() -> None:
    """Review s24-rev-fix24 F1 (its test, moved): session 23's seed 65, tenant t2, requests 24/25 as
    recorded, request 24 shed in the flood run: B's flood start is 0.2 ms before its calm one, 6.7 ms after
    A's. B keeps its pair, A drops out alone. Fails at c54495c6 (it ranked "fewest early flood starts"
    above the gap and paired A's calm TTFT with B's flood TTFT)."""
    calm = [["t2", 19.3738, 0.021, 0, 0, "r"], ["t2", 19.3807, 0.031, 0, 0, "r"]]
    flood = [["t2", 19.3805, 0.09, 0, 0, "r"]]
    assert _pairs(calm, flood) == [(0.031, 0.09)]


def test_a_lone_survivor_takes_the_nearer_calm_start() -> None:
    """The limit: A's flood start 5 ms late is 3 ms from its shed neighbour B's calm start, so it pairs with
    B (the mirror image of the test above; review s23-rev-fix23a F2 wanted A here, which only a rule
    preferring late starts gives, and that rule is wrong on the real traces). Starts cannot separate the
    two; this pins what the rule does, not what is right."""
    calm = [["t0", 10.000, 0.02, 0, 0, "r"], ["t0", 10.008, 0.03, 0, 0, "r"]]
    flood = [["t0", 10.005, 0.09, 0, 0, "r"]]
    assert _pairs(calm, flood) == [(0.03, 0.09)]


def test_answered_neighbours_are_not_swapped() -> None:
    """Both answered, A's flood start 3.9 ms late (0.1 ms from B's calm start), B's 0.5 ms late: each keeps
    its own pair, in order. Fails on a6977267 (the nearest start paired B with A's flood run first, then A
    with B's)."""
    calm = [["t0", 10.000, 0.02, 0, 0, "r"], ["t0", 10.004, 0.03, 0, 0, "r"]]
    flood = [["t0", 10.0039, 0.08, 0, 0, "r"], ["t0", 10.0045, 0.09, 0, 0, "r"]]
    assert _pairs(calm, flood) == [(0.02, 0.08), (0.03, 0.09)]


def test_an_early_flood_start_pairs_and_starts_beyond_the_window_never_do() -> None:
    calm = [["t0", 10.000, 0.02, 0, 0, "r"], ["t0", 11.000, 0.03, 0, 0, "r"]]
    flood = [["t0", 9.997, 0.08, 0, 0, "r"], ["t0", 11.000 + ri.GOAL_MATCH_S * 1.5, 0.09, 0, 0, "r"]]
    assert _pairs(calm, flood) == [(0.02, 0.08)]


def test_every_single_shed_of_session_23s_traces_pairs_the_rest_right() -> None:
    """Session 23's seeds 65/66: all 821 quiet requests answered in both runs, so a tenant's k-th start is
    the same request in both (and the whole traces pair so). Shedding each flood request in turn, among the
    8 around it (the alignment is local, the window 10 ms), every other one keeps its own pair. Fails at
    c54495c6 (4 mispaired)."""
    doc = json.loads(S23.read_text())
    wrong, cases = [], 0
    for seed in (65, 66):
        calm, flood = (next(iter(doc["runs"][f"seed {seed}, {mix}"]["bench"]["runs"].values()))["trace"]
                       for mix in ("calm", "flood"))  # fmt: skip
        for tenant in sorted({row[0] for row in calm}):
            xs = sorted(row[1:3] for row in calm if row[0] == tenant)
            ys = sorted(row[1:3] for row in flood if row[0] == tenant)
            assert len(xs) == len(ys)
            rows = [[tenant, *x] for x in xs], [[tenant, *y] for y in ys]
            assert _pairs(*rows, 0.0) == [(x[1], y[1]) for x, y in zip(xs, ys, strict=True)]
            for shed in range(len(ys)):
                lo, hi = max(0, shed - 4), min(len(ys), shed + 5)
                near = [k for k in range(lo, hi) if k != shed]
                got = _pairs([[tenant, *xs[k]] for k in range(lo, hi)], [[tenant, *ys[k]] for k in near], 0.0)
                cases += 1
                if got != [(xs[k][1], ys[k][1]) for k in near]:
                    wrong.append((seed, tenant, shed))
    assert cases == 821 and not wrong, wrong
