"""late-b31: ``kvgate bench flowcontrol --arms`` took an unknown arm name without a ``+`` modifier (``x``,
``kvgate-reserve-feasible-slo``: suffixes in the wrong order) and configured it as the plain ``kvgate``
arm, silently. Every ``--arms`` entry is now a known name (exit 2 before any arm runs, listing them), and
every name the docs, scripts and tests use still parses. Fails on 674e1c56."""

from __future__ import annotations

import pytest

from kvgate.bench import flowcontrol_bench as fb
from kvgate.bench import flowcontrol_live


@pytest.mark.parametrize(
    "bad", ["x", "kvgate-reserve-feasible-slo", "none-slo", "reference-feasible", "kvgatex"]
)
def test_an_unknown_arm_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=rf"arm {bad}: unknown arm .*known: none, reference, kvgate"):
        fb.arm_config(bad, 30.0)


@pytest.mark.parametrize("bad", ["x", "kvgate-reserve-feasible-slo"])
def test_an_unknown_arm_is_refused_before_any_arm_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(fb, "rates", lambda *a, **k: (10.0, 1.0))
    monkeypatch.setattr(fb, "step_floor", lambda *a, **k: {})
    monkeypatch.setattr(fb.FlowSim, "simulate", lambda self, *a, **k: ran.append(self.arm))
    monkeypatch.setattr(flowcontrol_live, "main_from_args", lambda *a: ran.append("live") or 0)
    for extra in ([], ["--live"], ["--frontier", "ttl=10,20"]):
        with pytest.raises(SystemExit) as exc:
            fb.main(["--quick", *extra, "--arms", f"reference,{bad}"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"--arms: arm {bad}: unknown arm" in err and "kvgate-reserve-slo-feasible" in err, err
    assert ran == []


# Every ``--arms`` name docs/, scripts/ and tests/ used when this landed (grep of ``--arms`` values).
USED = [
    "none",
    "reference",
    "kvgate",
    "kvgate-feasible",
    "kvgate-slo",
    "kvgate-preempt",
    "kvgate-preempt-feasible",
    "kvgate-preempt-slo-feasible",
    "kvgate-reserve",
    "kvgate-reserve-feasible",
    "kvgate-reserve-feasible+pack",
    "kvgate-reserve-slo",
    "kvgate-reserve-slo-feasible",
    "kvgate-reserve-slo+pack",
    "kvgate-reserve-slo-feasible+alone",
    "kvgate-reserve+pack+alone",
    fb.GOAL_ARM,
]


@pytest.mark.parametrize("arm", USED)
def test_every_arm_name_in_use_still_parses(arm: str) -> None:
    name, _ = fb.split_arm(arm)
    assert name in fb.KNOWN_ARMS
    fb.arm_config(arm, 30.0)
