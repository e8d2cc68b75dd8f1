"""Review s26-rev-fc26 F3: ``kvgate bench flowcontrol --frontier ... --critical-burst X`` ran without the
burst (``flowcontrol_frontier.frontier_main`` built its ``Mix`` without ``critical_burst``) while
``--critical-slo`` was applied: the option was accepted and silently ignored. Fails on fc26 5da2e02d and
main f76859c4. No process is started; the simulations are stubbed (the first one's arrivals are captured,
then the run stops)."""

from __future__ import annotations

from typing import Any

import pytest

from kvgate.bench import flowcontrol_bench as fb
from kvgate.bench import flowcontrol_frontier as ff


class _Stop(Exception):
    pass


def _first_arrivals(monkeypatch: pytest.MonkeyPatch, burst: str) -> list[Any]:
    got: list[Any] = []

    class Sim:
        def simulate(self, arrivals: list[Any], horizon: float) -> Any:
            got.extend(arrivals)
            raise _Stop

    monkeypatch.setattr(ff, "sim_from_args", lambda *a, **k: Sim())
    with pytest.raises(_Stop):
        fb.main(["--frontier", "ttl=30", "--arms", "kvgate", "--seed", "3", "--duration", "30",
                 "--critical-slo", "0.3", "--critical-burst", burst])  # fmt: skip
    return got


def test_frontier_mode_honours_critical_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _first_arrivals(monkeypatch, "0")
    burst = _first_arrivals(monkeypatch, "40")
    crit = [a for a in burst if a.tenant == fb.CRITICAL and 5.0 <= a.at % 10.0 < 6.0]
    crit0 = [a for a in plain if a.tenant == fb.CRITICAL and 5.0 <= a.at % 10.0 < 6.0]
    assert len(crit) > len(crit0), "--critical-burst is ignored in --frontier mode"
