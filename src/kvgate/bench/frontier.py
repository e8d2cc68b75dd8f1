"""SLO attainment against shed rate: a policy's frontier over its knob settings, and a comparison of one
policy's setting with another's frontier at the same shed rate (``kvgate bench flowcontrol --frontier``).

A policy run at one setting of a knob (the flow controller's ``defaultRequestTTL``, a band's
``maxRequests``) gives one point: the share of requests shed and the all-request SLO attainment (a shed
request counts as a miss). Over several settings its **frontier** is the best attainment reachable at
each shed rate: the points no other point beats on both (shedding no more and attaining no less), and
between two of them the straight line, since running one setting part of the time and the other the
rest reaches any point of that segment; so the frontier is the upper concave hull of the points, and
is at least as good as any single setting. Below the lowest shed rate any setting reached the frontier
is undefined (``None``: that policy cannot shed so little); above the highest it stays flat (shedding
is allowed, not required). Measured against a concave hull the other policy gets the benefit of every
doubt, so "above the frontier" is the stricter claim.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

EPS = 1e-12


@dataclass(frozen=True, slots=True)
class Point:
    """One setting's outcome: ``knob`` = ``value`` gave ``shed_rate`` (0-1) and ``attainment`` (0-1)."""

    knob: str
    value: float
    shed_rate: float
    attainment: float


def pareto(points: Iterable[Point]) -> list[Point]:
    """The points no other point dominates (sheds no more and attains at least as much), by shed rate:
    attainment strictly rises along the list. Of equal points the first kept."""
    out: list[Point] = []
    for p in sorted(points, key=lambda p: (p.shed_rate, -p.attainment)):
        # (at one shed rate the best comes first, so a later one there never rises above it)
        if not out or p.attainment > out[-1].attainment + EPS:
            out.append(p)
    return out


def frontier(points: Iterable[Point]) -> list[Point]:
    """The upper concave hull of the Pareto points: the corners of the best attainment reachable at
    each shed rate when two settings may share the time."""
    hull: list[Point] = []
    for p in pareto(points):
        # Drop the last corner while it lies on or under the chord from the one before it to p.
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            rise = (b.shed_rate - a.shed_rate) * (p.attainment - a.attainment)
            if rise - (b.attainment - a.attainment) * (p.shed_rate - a.shed_rate) >= -EPS:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def attainment_at(corners: Sequence[Point], shed_rate: float) -> float | None:
    """The frontier's attainment at ``shed_rate`` (``corners`` from ``frontier``): linear between two
    corners, flat past the last, ``None`` below the first (out of that policy's reach)."""
    if not corners or shed_rate < corners[0].shed_rate - EPS:
        return None
    for a, b in itertools.pairwise(corners):
        if shed_rate <= b.shed_rate:
            span = b.shed_rate - a.shed_rate
            if span <= EPS:
                return b.attainment
            return a.attainment + (b.attainment - a.attainment) * (shed_rate - a.shed_rate) / span
    return corners[-1].attainment


def compare(point: Point, corners: Sequence[Point]) -> dict[str, Any]:
    """``point`` (one policy's setting) against another policy's frontier at the same shed rate:
    ``delta`` = its attainment minus the frontier's there (positive: above it; ``None``: the other policy
    never shed that little)."""
    at = attainment_at(corners, point.shed_rate)
    return {
        "shed_rate": point.shed_rate,
        "attainment": point.attainment,
        "frontier_at": at,
        "delta": None if at is None else point.attainment - at,
    }


# Shed rates at which two frontiers are compared with each other (``gap``).
GRID = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)


def gap(mine: Sequence[Point], theirs: Sequence[Point], grid: Sequence[float] = GRID) -> list[dict[str, Any]]:
    """Two frontiers against each other at each shed rate of ``grid``: ``delta`` = mine minus theirs
    (``None`` where either policy never shed that little)."""
    out = []
    for s in grid:
        a, b = attainment_at(mine, s), attainment_at(theirs, s)
        out.append(
            {"shed_rate": s, "mine": a, "theirs": b, "delta": None if a is None or b is None else a - b}
        )
    return out


KNOBS = {
    "ttl": "flowControl.defaultRequestTTL, s",
    "batch-cap": "flowControl.priorityBands[priority -1].maxRequests (0 = none)",
    "slo-confidence": "flowControl.sloAdmissionConfidence (the *-slo arms)",
}


def parse_spec(spec: str, arms: Sequence[str]) -> tuple[list[str], str, list[float]]:
    """``[ARM:]KNOB=V1,V2,...`` -> (the arms it applies to, knob, values). Without ``ARM:`` every arm
    in ``arms``."""
    head, sep, values = spec.partition("=")
    if not sep or not values:
        raise ValueError(f"--frontier {spec!r}: expected [ARM:]KNOB=V1,V2,...")
    arm, colon, knob = head.rpartition(":")
    if knob not in KNOBS:
        raise ValueError(f"--frontier {spec!r}: knob must be one of {', '.join(KNOBS)}")
    if colon and arm not in arms:
        raise ValueError(f"--frontier {spec!r}: arm {arm!r} is not in --arms ({','.join(arms)})")
    try:
        vals = [float(v) for v in values.split(",")]
    except ValueError:
        raise ValueError(f"--frontier {spec!r}: values must be numbers") from None
    if knob == "ttl" and any(v <= 0 for v in vals):
        raise ValueError(f"--frontier {spec!r}: a ttl must be > 0")
    if knob == "batch-cap" and any(v < 0 or v != round(v) for v in vals):
        raise ValueError(f"--frontier {spec!r}: a batch-cap must be a whole number >= 0")
    return ([arm] if colon else list(arms)), knob, vals


def sweeps(specs: Sequence[str], arms: Sequence[str]) -> dict[str, list[tuple[str, float]]]:
    """Every arm's settings to run, ``(knob, value)`` in the order given, duplicates once."""
    out: dict[str, list[tuple[str, float]]] = {arm: [] for arm in arms}
    for spec in specs:
        targets, knob, values = parse_spec(spec, arms)
        for arm in targets:
            for v in values:
                if (knob, v) not in out[arm]:
                    out[arm].append((knob, v))
    return out
