"""Each policy's own knee uses its own unloaded p90 (review s25-rev-hetero25, tests moved here from the
review and extended): the knee of a policy must not depend on which others are compared (F1), a policy
that finishes nothing unloaded must not zero the others' knees (F2), and the sweep stays scaled by the
capacity as published, the probe policies' knee on the ladder with the shared threshold (F4), with or
without the per-policy search (F5, ``own_knees=False``).

The fleet runs are replaced by a p90 curve (as in ``test_knee_per_policy_hetero25.py``): what is tested
is the search's threshold and which capacity scales the sweep, not the simulator.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from kvgate.bench import sweep
from kvgate.bench.scenarios import SCENARIOS

SERVED = 383.6
HETERO = SCENARIOS["hetero"]  # probe policies: reference, kvgate, least-request


class Stop(Exception):
    """Raised at the sweep's first point: the knee searches are done, the sweep's load is recorded."""


def _p90(idle: float | None, edge: float, qps: float) -> float | None:
    """The policy's idle p90, rising by half of it up to its edge, 10x past it (as sglang's model's rises
    from 47 to 68 ms on hetero); ``None`` idle: finishes nothing at 0.1 x, 30 ms above."""
    if idle is None:
        return None if qps <= 0.1 * SERVED + 1e-6 else 0.030
    return idle * (1 + 0.5 * qps / edge) if qps <= edge else 10 * idle


def _run(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    policies: list[str],
    idle: dict[str, float | None],
    edge: dict[str, float],
    own_knees: bool = True,
) -> SimpleNamespace:
    """``run_scenario(hetero, --capacity knee)`` up to the sweep's first point: every knee search's
    result, the probed policies and the sweep's first load."""
    seen = SimpleNamespace(knees=[], probed=[], sweep_qps=None)

    def run_point(sc: Any, policy: str, qps: float, duration: float, seed: int, *a: Any, **k: Any) -> Any:
        if a or k:  # the sweep passes its progress tick; the knee searches do not
            seen.sweep_qps = qps
            raise Stop
        return SimpleNamespace(row={"ttft_p90": _p90(idle[policy], edge[policy], qps)})

    def probe(sc: Any, policy: str, seed: int, duration: float) -> float:
        seen.probed.append(policy)
        return SERVED

    real = sweep.knee_capacity

    def knee_capacity(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        seen.knees.append(out)
        return out

    monkeypatch.setattr(sweep, "run_point", run_point)
    monkeypatch.setattr(sweep, "probe_capacity", probe)
    monkeypatch.setattr(sweep, "knee_capacity", knee_capacity)
    with pytest.raises(Stop):
        sweep.run_scenario(
            HETERO,
            quick=True,
            seed=1,
            out=tmp_path,
            policies=policies,
            capacity="knee",
            console=Console(quiet=True),
            **({} if own_knees else {"own_knees": False}),  # (main's src: the fix's tests fail on it)
        )
    return seen


# The probe policies: kvgate idles lowest, so it sets the shared threshold (2 x 20 ms).
IDLE: dict[str, float | None] = {"kvgate": 0.020, "reference": 0.030, "least-request": 0.030}
EDGE = {"kvgate": 300.0, "reference": 400.0, "least-request": 250.0}


def test_a_policys_own_knee_does_not_depend_on_which_others_are_compared(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # sglang's model: 50-75 ms up to 380 req/s (its own 2x unloaded is ~105 ms). A fast-idling
    # round-robin (5 ms) compared beside it must not move its knee; with a threshold shared across the
    # compared set (main before the fix) it failed at the first ladder step (knee 0).
    idle = IDLE | {"sglang-cache-aware": 0.050, "round-robin": 0.005}
    edge = EDGE | {"sglang-cache-aware": 380.0, "round-robin": 200.0}
    alone = _run(monkeypatch, tmp_path, ["sglang-cache-aware"], idle, edge).knees[-1][1]
    beside = _run(monkeypatch, tmp_path, ["round-robin", "sglang-cache-aware"], idle, edge).knees[-1][1]
    assert alone["knee_req_per_s"]["sglang-cache-aware"] > 370.0, alone
    for pol in ("kvgate", "reference", "least-request", "sglang-cache-aware"):
        assert beside["knee_req_per_s"][pol] == alone["knee_req_per_s"][pol], pol
    assert beside["unloaded_p90_s"]["sglang-cache-aware"] == pytest.approx(0.050 * (1 + 0.05 * SERVED / 380))


def test_a_compared_policy_that_finishes_nothing_unloaded_has_no_knee_and_zeroes_no_other(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    idle = IDLE | {"round-robin": None}
    edge = EDGE | {"round-robin": 0.0}
    own = _run(monkeypatch, tmp_path, ["round-robin"], idle, edge).knees[-1][1]
    assert own["knee_req_per_s"]["round-robin"] == 0.0 and own["unloaded_p90_s"]["round-robin"] is None
    assert own["points"]["round-robin"] == []
    assert all(own["knee_req_per_s"][p] > 0 for p in ("kvgate", "reference", "least-request")), own


def test_a_probe_policy_that_finishes_nothing_unloaded_is_left_out_of_the_shared_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    idle = {"kvgate": 0.027, "reference": None}
    edge = {"kvgate": 370.0, "reference": 0.0}
    monkeypatch.setattr(
        sweep,
        "run_point",
        lambda sc, pol, q, *a, **k: SimpleNamespace(row={"ttft_p90": _p90(idle[pol], edge[pol], q)}),
    )
    cap, info = sweep.knee_capacity(HETERO, ["kvgate", "reference"], 1, 15.0, SERVED, Console(quiet=True))
    assert info["unloaded_p90_s"] == pytest.approx(0.027 * (1 + 0.05 * SERVED / 370))
    # (main before the fix: the base was 0.0, every knee 0 and the capacity the ladder's first load)
    assert info["knee_req_per_s"]["kvgate"] > 0.1 * SERVED
    assert cap == max(info["knee_req_per_s"].values())


def test_the_sweep_is_scaled_by_the_ladder_knee_on_the_shared_threshold_with_or_without_own_knees(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with_own = _run(monkeypatch, tmp_path, ["kvgate", "reference"], IDLE, EDGE)
    (cap, capacity), (_, own) = with_own.knees
    # The capacity as published since --capacity knee was added: the probe policies only, the lowest
    # unloaded p90 as everyone's threshold, the ladder's loads alone.
    shared = capacity["unloaded_p90_s"]
    ladder = [round(SERVED * f, 2) for f in sweep.KNEE_LADDER]
    expected = max(
        sweep.search_knee(lambda q, p=pol: _p90(IDLE[p], EDGE[p], q), ladder, shared, refine=0)[0]
        for pol in HETERO.probe_policies
    )
    assert capacity["threshold"] == "shared" and capacity["refine"] == 0
    assert shared == min(_p90(IDLE[p], EDGE[p], 0.1 * SERVED) for p in HETERO.probe_policies)  # type: ignore[type-var]
    assert cap == expected
    assert max(own["knee_req_per_s"].values()) != cap  # the own knees would scale it differently
    assert with_own.sweep_qps == round(cap * HETERO.quick_fractions[0], 2)
    assert with_own.probed == ["reference", "kvgate", "least-request"]  # kvgate, reference named already
    # Without the per-policy search: the same capacity and sweep, one search, the probe policies probed.
    without = _run(monkeypatch, tmp_path, ["kvgate", "reference", "sglang-cache-aware"], IDLE, EDGE, False)
    assert [k[0] for k in without.knees] == [cap]
    assert "per_policy" not in without.knees[0][1]
    assert without.sweep_qps == with_own.sweep_qps
    assert without.probed == HETERO.probe_policies


def test_the_markdown_gives_each_policys_own_unloaded_p90_and_knee() -> None:
    knee = {
        "per_policy": {
            "unloaded_p90_s": {"kvgate": 0.030, "round-robin": None},
            "knee_req_per_s": {"kvgate": 375.73, "round-robin": 0.0},
            "refine": 3,
        }
    }
    md = sweep._capacity_md(HETERO, {"kvgate": 346.9, "round-robin": 300.0}, knee)
    assert "| kvgate | 346.9 | 30.0 | 375.7 |" in md
    assert "| round-robin | 300.0 | - | 0.0 |" in md
    assert "own unloaded p90" in md and "nominal" in md
    assert sweep._capacity_md(HETERO, {}, {}) == ""


def test_the_command_line_skips_the_own_knees_with_no_own_knees(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kvgate.bench import cli

    got: list[dict[str, Any]] = []
    monkeypatch.setattr(sweep, "run_scenario", lambda sc, **k: got.append(k))
    base = ["hetero", "--quick", "--capacity", "knee", "--out", str(tmp_path)]
    assert cli.main(base) == 0 and cli.main([*base, "--no-own-knees"]) == 0
    assert [(k["capacity"], k["own_knees"]) for k in got] == [("knee", True), ("knee", False)]
