"""Review s26-rev-fc26 F3's sibling: ``kvgate bench flowcontrol --live`` sends the default SLOs and mix
(``flowcontrol_live`` reads neither ``--critical-slo`` nor ``--critical-burst``), so with either option the
live run went ahead without it and said nothing. It is now refused (exit 2, naming the options) before
anything starts. Fails on main f76859c4 (the live run is reached). No process is started: the live run is
stubbed."""

from __future__ import annotations

import pytest

from kvgate.bench import flowcontrol_bench as fb
from kvgate.bench import flowcontrol_live


class _Reached(Exception):
    pass


def _no_live(*_a: object, **_k: object) -> int:
    raise _Reached


@pytest.mark.parametrize("opt", [["--critical-burst", "40"], ["--critical-slo", "0.3"]])
def test_live_refuses_the_simulator_only_critical_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], opt: list[str]
) -> None:
    monkeypatch.setattr(flowcontrol_live, "main_from_args", _no_live)
    with pytest.raises(SystemExit) as e:
        fb.main(["--live", "--seed", "3", *opt])
    assert e.value.code == 2
    assert "--critical-burst" in capsys.readouterr().err


def test_live_without_them_goes_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flowcontrol_live, "main_from_args", _no_live)
    with pytest.raises(_Reached):
        fb.main(["--live", "--seed", "3"])
