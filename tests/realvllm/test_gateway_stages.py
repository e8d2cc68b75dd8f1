"""``scripts/realvllm/gateway_stages.py`` (``gateway_cpu.py --stages``): every stage it names exists in
this tree as a plain function (a rename would silently move its CPU into "other"), and a stage is charged
its own CPU only, not that of the wrapped calls it makes."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realvllm" / "gateway_stages.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gateway_stages_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_stage_is_a_plain_function_of_this_tree() -> None:
    found, missing = _script().resolve()  # (resolves only: nothing is wrapped in this process)
    assert missing == []
    assert len(found) == len(_script().STAGES)


def test_a_stage_is_charged_its_own_cpu_not_its_wrapped_callees() -> None:
    gs = _script()
    now = [0.0]
    gs._clock = lambda: now[0]  # the main thread's CPU clock, injected

    def inner_fn() -> None:
        now[0] += 3.0

    inner = gs._wrap("inner", inner_fn)

    def outer_fn() -> None:
        now[0] += 1.0
        inner()
        now[0] += 0.5

    outer = gs._wrap("outer", outer_fn)
    gs._totals.update({"outer": 0.0, "inner": 0.0})
    gs._calls.update({"outer": 0, "inner": 0})
    outer()  # accounting off (before SIGUSR1): nothing charged
    assert gs._calls == {"outer": 0, "inner": 0}
    gs._start()
    outer()
    assert gs._calls == {"outer": 1, "inner": 1}
    assert gs._totals == {"outer": 1.5, "inner": 3.0}
    gs._snap()
    assert [s["main_s"] for s in gs._snaps] == [4.5, 9.0]
    assert gs._snaps[-1]["stages"] == {"outer": 1.5, "inner": 3.0}
