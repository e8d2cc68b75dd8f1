"""A bench with two entry points (``kvgate bench <name>`` and ``python -m <module>``) names, in its usage
line, the one it was started by (``kvgate.entry.prog``). Before, each named one of them whichever way it
was run: gateway_overhead, sim_capacity, extproc_bench, picker_micro and calibrate ``python -m`` only;
precise, scrape-cpu, gateway-ttft, multicluster (and its ``--live``), soak and epp-replicas ``kvgate
bench`` only. ``python -m kvgate.bench.multicluster --live`` also ran the fleet simulator instead of the
live bench (``--live`` was looked for in ``argv=None``)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvgate.bench import cli

ROOT = Path(__file__).resolve().parents[2]
# module -> its ``kvgate bench`` command, and the arguments that select it (``--live``)
CASES = {
    "kvgate.bench.picker_micro": ("picker", ()),
    "kvgate.bench.sim_capacity": ("sim-capacity", ()),
    "kvgate.bench.gateway_overhead": ("gateway-overhead", ()),
    "kvgate.bench.gateway_ttft": ("gateway-ttft", ()),
    "kvgate.bench.extproc_bench": ("extproc", ()),
    "kvgate.bench.peers": ("peers", ()),
    "kvgate.bench.precise": ("precise", ()),
    "kvgate.bench.multicluster": ("multicluster", ()),
    "kvgate.bench.multicluster --live": ("multicluster", ("--live",)),
    "kvgate.bench.soak": ("soak", ()),
    "kvgate.bench.epp_replicas": ("epp-replicas", ()),
    "kvgate.bench.scrape_cpu": ("scrape-cpu", ()),
    "kvgate.sim.calibrate": ("calibrate", ()),
}


def _has_main_block(module: str) -> bool:
    path = ROOT / "src" / (module.replace(".", "/") + ".py")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return True
    return False


def test_every_bench_with_two_entry_points_is_checked() -> None:
    both = {m for m in cli.DELEGATED.values() if _has_main_block(m)}
    assert both == {case.split()[0] for case in CASES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_usage_line_names_kvgate_bench_when_run_so(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    command, extra = CASES[case]
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, *extra, "--help"])
    assert exit_.value.code == 0
    want = " ".join(["usage: kvgate bench", command, *extra]) + " "
    assert capsys.readouterr().out.startswith(want)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_usage_line_names_python_m_when_run_so(case: str) -> None:
    module, extra = case.split()[0], CASES[case][1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-m", module, *extra, "--help"], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    want = " ".join(["usage: python -m", module, *extra]) + " "
    assert run.stdout.startswith(want), run.stdout[:300]
