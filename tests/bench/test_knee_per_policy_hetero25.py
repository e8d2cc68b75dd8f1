"""The knee capacity (issue #16): searched for every policy a run compares, finer than the ladder's steps.

The knee is the highest offered load whose p90 TTFT stays within 2x the unloaded p90. The fleet runs
are replaced by a p90 curve here (the search is what is tested; ``test_sweep.py`` runs the real toy
fleet end to end).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from kvgate.bench import sweep
from kvgate.bench.scenarios import SCENARIOS

# Per policy, the load past which its p90 jumps 10x (the unloaded p90 is 30 ms for every policy).
EDGE = {"kvgate": 365.0, "reference": 210.0, "least-request": 270.0, "sglang-cache-aware": 330.0}
BASE_P90 = 0.030


def _fake_run_point(calls: list[tuple[str, float]]) -> Any:
    def run_point(sc: Any, policy: str, qps: float, duration: float, seed: int, *a: Any, **k: Any) -> Any:
        calls.append((policy, qps))
        p90 = BASE_P90 if qps <= EDGE[policy] else 10 * BASE_P90
        return SimpleNamespace(row={"ttft_p90": p90})

    return run_point


def test_the_knee_is_bisected_between_the_ladder_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(sweep, "run_point", _fake_run_point(calls))
    served = 383.6  # ladder: 115.08, 191.8, 268.52, 306.88, 345.24, 383.6, 421.96
    cap, info = sweep.knee_capacity(
        SCENARIOS["hetero"], ["kvgate", "reference"], 1, 15.0, served, Console(quiet=True), refine=3
    )
    knees = info["knee_req_per_s"]
    # Each knee lies within one eighth of the ladder's gap around the policy's true edge below it (the
    # ladder alone gives 345.24 and 191.8).
    for pol, gap in (("kvgate", 0.1 * served), ("reference", 0.2 * served)):
        assert EDGE[pol] - gap / 8 <= knees[pol] <= EDGE[pol], (pol, knees[pol])
    assert cap == knees["kvgate"]
    assert info["unloaded_p90_s"] == BASE_P90
    # Every load tried is recorded, and the knee is the highest load within it below every load past it.
    pts = info["points"]["kvgate"]
    assert (knees["kvgate"], BASE_P90) in pts
    assert min(q for q, p90 in pts if p90 > 2 * BASE_P90) > knees["kvgate"]


def test_no_bisection_when_the_first_load_fails_or_none_fails() -> None:
    tried: list[float] = []

    def never(q: float) -> float:
        tried.append(q)
        return 1.0

    assert sweep.search_knee(never, [10.0, 20.0], base=0.1) == (0.0, [(10.0, 1.0)])
    assert tried == [10.0]
    knee, pts = sweep.search_knee(lambda q: 0.1, [10.0, 20.0], base=0.1)
    assert knee == 20.0 and [q for q, _ in pts] == [10.0, 20.0]  # the ladder's top: no edge to bisect


def test_every_compared_policy_gets_a_knee_and_a_probe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, list[str]] = {}

    class Stop(Exception):
        pass

    def probe(sc: Any, policy: str, seed: int, duration: float) -> float:
        seen.setdefault("probed", []).append(policy)
        return 380.0 if policy == "reference" else 300.0

    def knee(
        sc: Any, policies: list[str], seed: int, duration: float, served: float, *a: Any, **k: Any
    ) -> Any:
        seen.setdefault("knee", []).append(",".join(policies))
        seen.setdefault("refine", []).append(k.get("refine", 0))
        seen.setdefault("served", []).append(served)  # type: ignore[arg-type]
        if len(seen["knee"]) == 2:
            raise Stop
        return 300.0, {}

    monkeypatch.setattr(sweep, "probe_capacity", probe)
    monkeypatch.setattr(sweep, "knee_capacity", knee)
    monkeypatch.setattr(sweep, "run_point", lambda *a, **k: (_ for _ in ()).throw(Stop()))  # no sweep
    with pytest.raises(Stop):
        sweep.run_scenario(
            SCENARIOS["hetero"],
            quick=True,
            seed=1,
            out=tmp_path,
            policies=["kvgate", "reference", "sglang-cache-aware"],
            capacity="knee",
            console=Console(quiet=True),
        )
    both = ["reference", "kvgate", "least-request", "sglang-cache-aware"]
    assert seen["probed"] == both
    # The capacity (scaling the sweep) is still the probe policies' knee on the served capacity of the
    # scenario's probe policies; then every compared policy gets its own knee on the same ladder.
    assert seen["knee"] == ["reference,kvgate,least-request", ",".join(both)]
    assert seen["served"] == [380.0, 380.0]
    assert seen["refine"] == [0, sweep.KNEE_REFINE]  # the capacity: the ladder alone, as published
