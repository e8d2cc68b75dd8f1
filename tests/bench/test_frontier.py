"""The attainment-vs-shed-rate frontier (``kvgate.bench.frontier``): dominance, the concave hull,
interpolation at a shed rate, the comparison's sign, and the ``--frontier`` spec parsing."""

from __future__ import annotations

import pytest

from kvgate.bench.frontier import Point, attainment_at, compare, frontier, gap, pareto, parse_spec, sweeps


def pt(shed: float, att: float, value: float = 0.0) -> Point:
    return Point("ttl", value, shed, att)


def test_pareto_drops_points_another_beats_on_both() -> None:
    a, b, c = pt(0.0, 0.70), pt(0.01, 0.68), pt(0.02, 0.75)  # b sheds more than a and attains less
    same_shed_worse = pt(0.02, 0.74)
    assert pareto([c, b, a, same_shed_worse]) == [a, c]


def test_pareto_keeps_one_of_equal_points() -> None:
    assert pareto([pt(0.0, 0.7, 1), pt(0.0, 0.7, 2)]) == [pt(0.0, 0.7, 1)]


def test_frontier_is_the_upper_concave_hull() -> None:
    a, dip, b, c = pt(0.0, 0.60), pt(0.05, 0.62), pt(0.10, 0.80), pt(0.20, 0.85)
    # dip lies under the chord a-b (0.70 at 0.05): sharing the time between a and b beats it.
    assert frontier([a, dip, b, c]) == [a, b, c]
    above = pt(0.05, 0.75)  # above the chord: a corner
    assert frontier([a, above, b, c]) == [a, above, b, c]


def test_frontier_drops_a_point_on_the_chord() -> None:
    assert frontier([pt(0.0, 0.6), pt(0.1, 0.7), pt(0.2, 0.8)]) == [pt(0.0, 0.6), pt(0.2, 0.8)]


def test_attainment_at_interpolates_between_corners() -> None:
    corners = frontier([pt(0.0, 0.60), pt(0.10, 0.80)])
    assert attainment_at(corners, 0.05) == pytest.approx(0.70)
    assert attainment_at(corners, 0.0) == pytest.approx(0.60)
    assert attainment_at(corners, 0.10) == pytest.approx(0.80)


def test_attainment_at_is_flat_past_the_last_corner_and_none_below_the_first() -> None:
    corners = frontier([pt(0.01, 0.60), pt(0.10, 0.80)])
    assert attainment_at(corners, 0.50) == pytest.approx(0.80)
    assert attainment_at(corners, 0.005) is None
    assert attainment_at([], 0.1) is None


def test_compare_signs_the_difference_at_the_points_own_shed_rate() -> None:
    corners = frontier([pt(0.0, 0.60), pt(0.10, 0.80)])
    above = compare(pt(0.02, 0.70), corners)  # frontier there 0.64
    assert above["frontier_at"] == pytest.approx(0.64) and above["delta"] == pytest.approx(0.06)
    below = compare(pt(0.05, 0.65), corners)  # frontier there 0.70
    assert below["delta"] == pytest.approx(-0.05)
    unreachable = compare(pt(0.0, 0.9), frontier([pt(0.01, 0.5)]))
    assert unreachable["frontier_at"] is None and unreachable["delta"] is None


def test_parse_spec_with_and_without_an_arm() -> None:
    arms = ["reference", "kvgate"]
    assert parse_spec("ttl=1,2.5", arms) == (arms, "ttl", [1.0, 2.5])
    assert parse_spec("reference:batch-cap=0,5", arms) == (["reference"], "batch-cap", [0.0, 5.0])


@pytest.mark.parametrize(
    "spec", ["ttl", "ttl=", "speed=1", "other:ttl=1", "ttl=a", "ttl=0", "batch-cap=-1", "batch-cap=1.5"]
)
def test_parse_spec_refuses_what_it_cannot_run(spec: str) -> None:
    with pytest.raises(ValueError, match="--frontier"):
        parse_spec(spec, ["reference", "kvgate"])


def test_sweeps_merge_specs_per_arm_once_each() -> None:
    plan = sweeps(["ttl=1,2", "kvgate:ttl=2,5", "reference:batch-cap=3"], ["reference", "kvgate"])
    assert plan == {
        "reference": [("ttl", 1.0), ("ttl", 2.0), ("batch-cap", 3.0)],
        "kvgate": [("ttl", 1.0), ("ttl", 2.0), ("ttl", 5.0)],
    }


def test_gap_compares_two_frontiers_at_each_shed_rate() -> None:
    mine = frontier([pt(0.0, 0.70), pt(0.10, 0.80)])
    theirs = frontier([pt(0.01, 0.60), pt(0.05, 0.90)])
    got = gap(mine, theirs, (0.0, 0.01, 0.05, 0.2))
    assert [g["shed_rate"] for g in got] == [0.0, 0.01, 0.05, 0.2]
    assert got[0]["delta"] is None and got[0]["mine"] == pytest.approx(0.70)  # they never shed so little
    assert got[1]["delta"] == pytest.approx(0.71 - 0.60)
    assert got[2]["delta"] == pytest.approx(0.75 - 0.90)
    assert got[3]["delta"] == pytest.approx(0.80 - 0.90)  # both flat past their last corner


def test_the_frontier_help_names_every_knob(capsys: pytest.CaptureFixture[str]) -> None:
    """Review s17-docs D4: ``--frontier``'s help listed ttl and batch-cap, not slo-confidence."""
    from kvgate.bench.flowcontrol_bench import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = "".join(capsys.readouterr().out.split())  # (argparse wraps at a hyphen too)
    for knob in ("ttl", "batch-cap", "slo-confidence"):
        assert f"{knob}:" in text, knob
