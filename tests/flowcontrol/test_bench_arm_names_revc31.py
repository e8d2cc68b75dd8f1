"""Review rev-c31 F4: the bench's ``+pack`` / ``+alone`` arm modifiers were checked with
``arm.startswith("kvgate-reserve")`` although the key is set only when the name, less its ``-feasible``
then ``-slo`` suffix, is exactly ``kvgate-reserve``: ``kvgate-reserve-feasible-slo+pack`` (suffixes in the
other order) or ``kvgate-reservex+alone`` gave a config with neither the headroom nor the key, silently. And
a bad modifier was found only when that arm's simulation was built, after the arms before it had run (a
traceback). Now every ``--arms`` entry is checked in ``main`` before anything runs (exit 2, naming it).
Fail on beb11387."""

from __future__ import annotations

import pytest

from kvgate.bench import flowcontrol_bench as fb
from kvgate.bench import flowcontrol_live


@pytest.mark.parametrize("arm", ["kvgate-reserve-feasible-slo+pack", "kvgate-reservex+alone",
                                 "kvgate-reserve-preempt+alone"])  # fmt: skip
def test_a_modifier_the_arm_would_drop_is_refused(arm: str) -> None:
    with pytest.raises(ValueError, match=r"\+pack/\+alone only on a kvgate-reserve arm"):
        fb.arm_config(arm, 30.0)


@pytest.mark.parametrize("arm", ["kvgate-reserve-slo+pack", "kvgate-reserve-slo-feasible+alone"])
def test_a_modifier_on_a_reserve_arm_with_both_suffixes_is_applied(arm: str) -> None:
    fc = fb.arm_config(arm, 30.0)["flowControl"]
    assert "fairShareHeadroom" in fc and fc["sloAdmission"] is True
    assert fc.get("packCertainMisses" if arm.endswith("+pack") else "prefillAlonePick") is True


@pytest.mark.parametrize("bad", ["kvgate-reserve-feasible+alon", "kvgate-reserve-feasible-slo+pack"])
def test_a_bad_arm_is_refused_before_any_arm_runs(
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
        assert f"--arms: arm {bad}:" in capsys.readouterr().err
    assert ran == []
